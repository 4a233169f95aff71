"""The report's plots: a metric against a numeric switch (one line per value of the other switches), or bars
per setting, with the metric's unit and the switch's meaning on the axes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from runtime.reporting.runs import RunRecord
from runtime.reporting.tables import Setting, Spread, metric_spread
from runtime.results import DATA_KINDS

# axis label of a metric, by its last key part (`test/psnr`, `test/wiener/psnr`): name, unit, which way is better
METRIC_UNITS = {
    "psnr": "PSNR (dB, higher is better)",
    "ssim": "SSIM (unitless, 0 to 1, higher is better)",
    "lpips": "LPIPS (unitless distance, lower is better)",
    "fid": "FID (unitless, lower is better)",
    "elbo": "negative ELBO (nats per image, lower is better)",
    "nll": "NLL (nats per image, lower is better)",
    "recon": "reconstruction -log p(x|z) (nats per image)",
    "kl": "KL(q(z|x) || p(z)) (nats per image)",
    "bpd": "bits per dimension (lower is better)",
    "accuracy": "accuracy (fraction correct, 0 to 1)",
    "loss": "loss (the training objective's units)",
    "mae": "MAE (on the [0, 1] pixel scale, lower is better)",
    "mse": "MSE (on the [0, 1] pixel scale, lower is better)",
}


# axis label of a numeric switch, by its last key part (`trainer.max_epochs`, `steps`)
SWITCH_UNITS = {
    "max_epochs": "training epochs",
    "max_steps": "training steps (optimizer updates)",
    "steps": "sampler steps (network evaluations per image)",
    "num_samples": "generated images",
    "guidance_scale": "guidance scale w (unitless)",
    "beta": "β, the KL weight (unitless)",
    "lr": "learning rate",
    "batch_size": "batch size (images)",
    "latent_dim": "latent dimensions",
    "crop": "training crop (pixels)",
    "size": "image size (pixels)",
    "nll_samples": "importance samples K",
    "seed": "seed",
}


def metric_label(metric: str) -> str:
    """The y axis of a metric: name and unit (e.g. `test/psnr` -> "test PSNR (dB, higher is better)")."""
    parts = metric.split("/")
    unit = METRIC_UNITS.get(parts[-1])
    if unit is None:
        return metric + " (unit not recorded)"
    return " ".join([*parts[:-1], unit])


def switch_label(key: str) -> str:
    """The x axis of a numeric switch: the override's key and what it counts."""
    what = SWITCH_UNITS.get(key.replace("/", ".").split(".")[-1])
    return f"{key}: {what}" if what else key


def _numeric(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _data_note(runs: list[RunRecord]) -> str:
    kinds = {r.data_kind for r in runs} - {"real"}
    return f" ({', '.join(DATA_KINDS[k][0] for k in sorted(kinds))} data)" if kinds else ""


def numeric_switches(parsed: dict[Setting, dict[str, str]]) -> list[str]:
    """The switches every setting sets to a number, with more than one value among the settings."""
    keys = set().union(*parsed.values())
    return [
        k
        for k in sorted(keys)
        if all(k in p and _numeric(p[k]) is not None for p in parsed.values())
        and len({p[k] for p in parsed.values()}) > 1
    ]


def _plot_lines(
    ax: Any, x: str, parsed: dict[Setting, dict[str, str]], spreads: dict[Setting, Spread | None], legend: str
) -> None:
    """The metric against switch `x`, one line per value of the other switches (log x where all are > 0)."""
    lines: dict[str, list[tuple[float, Spread]]] = defaultdict(list)
    for s in parsed:
        other = " ".join(f"{k}={v}" for k, v in sorted(parsed[s].items()) if k != x) or "as configured"
        if spreads[s] is not None:
            lines[other].append((float(parsed[s][x]), spreads[s]))
    for name, pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda p: p[0])
        ax.errorbar(
            [p[0] for p in pts],
            [p[1].mean for p in pts],
            yerr=[p[1].std for p in pts],
            marker="o",
            capsize=3,
            label=name,
        )
    log = all(float(parsed[s][x]) > 0 for s in parsed)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(switch_label(x) + (" (log scale)" if log else ""))
    ax.legend(fontsize=7, title=legend, title_fontsize=7)


def _count_text(sp: Spread) -> str:
    if sp.over == "repeats":
        return f"{sp.n_runs} runs, 1 seed"
    return f"{sp.n_runs} runs" if sp.over == "runs" else f"n={sp.n_seeds}"


def _plot_bars(ax: Any, spreads: dict[Setting, Spread | None], legend: str) -> None:
    """One bar per setting (mean, std error bar), annotated with the number of seeds (or runs)."""
    names = [" ".join(s) or "(as configured)" for s in spreads]
    sps = list(spreads.values())
    bars = ax.bar(
        range(len(names)),
        [sp.mean if sp else 0 for sp in sps],
        yerr=[sp.std if sp else 0 for sp in sps],
        capsize=3,
        label="bars: mean over seeds (n = seeds)\n" + legend,
    )
    for bar, sp in zip(bars, sps):
        if sp is None:
            continue
        top = bar.get_height() + (sp.std if bar.get_height() >= 0 else -sp.std)
        ax.annotate(
            _count_text(sp), (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom", fontsize=6
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("setting (the switches that differ between the runs)")
    ax.margins(y=0.3)  # room above the bars for the legend
    ax.legend(fontsize=7, loc="upper left")


def build_figure(experiment: str, groups: dict[Setting, list[RunRecord]], metric: str) -> Any:
    """One metric's figure: against a numeric switch (one line per value of the other switches), else bars
    per setting. Error bars: std over seeds (over the repeats where a setting has one seed, said in the
    legend). Returns the matplotlib Figure (`fig.axes[0]` holds the labels); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parsed = {s: dict(o.lstrip("+~").split("=", 1) for o in s) for s in groups}
    numeric = numeric_switches(parsed)
    spreads = {s: metric_spread(rs, metric) for s, rs in groups.items()}
    not_seeds = any(sp is not None and sp.over in ("repeats", "runs") for sp in spreads.values())
    bar_meaning = "error bars: ± std over seeds" + (
        "\n(over repeated runs where a setting has one seed)" if not_seeds else ""
    )
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if numeric:
        _plot_lines(ax, numeric[0], parsed, spreads, bar_meaning)
        title = f"{experiment}: {metric} against {numeric[0]}"
    else:
        _plot_bars(ax, spreads, bar_meaning)
        title = f"{experiment}: {metric} per setting"
    ax.set_ylabel(metric_label(metric), fontsize=8)
    runs = [r for rs in groups.values() for r in rs]
    ax.set_title(title + _data_note(runs), fontsize=9)
    fig.tight_layout()
    return fig


def plot_experiment(
    experiment: str, groups: dict[Setting, list[RunRecord]], metrics: list[str], out: Path
) -> list[Path]:
    """`out/plots/<experiment>__<metric>.png` for each metric (build_figure); nothing for a single setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(groups) < 2:
        return []
    written = []
    for m in metrics:
        fig = build_figure(experiment, groups, m)
        path = out / "plots" / f"{experiment}__{m.replace('/', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
