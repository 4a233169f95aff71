"""`sweep=ddpm_samplers`: after the multirun of `experiments.sample` over samplers x step counts, one FID table
(rows: samplers, columns: steps) and an FID-vs-steps plot in the sweep directory, from the jobs' metrics.json.

Files: `<sweep dir>/fid_vs_steps.md` (also printed), `fid_vs_steps.png`, `fid_vs_steps.json`. Jobs whose
FID protocol differs from the first job's (feature network hash, N generated, N real, real split) are
refused rather than put in one table. `experiments.report <sweep dir>` gives the full report (provenance).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core.errors import InputError

log = logging.getLogger("experiments")
PROTOCOL_KEYS = ("feature_network", "num_generated", "num_real", "real_split", "min_samples", "comparable")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per job directory with a completed metrics.json holding test/fid."""
    jobs = []
    for metrics_path in sorted(sweep_dir.glob("*/metrics.json")):
        body = json.loads(metrics_path.read_text())
        if "test/fid" not in body:
            continue
        protocol = body.get("protocol") or {}
        jobs.append(
            {
                "job": metrics_path.parent.name,
                "sampler": protocol.get("sampler"),
                "steps": protocol.get("steps"),
                "fid": body["test/fid"],
                "images_per_second": body.get("sample/images_per_second"),
                "fid_protocol": {k: (protocol.get("test/fid") or {}).get(k) for k in PROTOCOL_KEYS},
                "data": (body.get("data") or {}).get("label"),
            }
        )
    return jobs


def fid_table(jobs: list[dict[str, Any]]) -> str:
    first = jobs[0]["fid_protocol"]
    for j in jobs[1:]:
        if j["fid_protocol"] != first:
            diff = [k for k in PROTOCOL_KEYS if j["fid_protocol"].get(k) != first.get(k)]
            raise InputError(
                f"job {j['job']} used another FID protocol than job {jobs[0]['job']} ({diff}): not tabulated together"
            )
    steps = sorted({j["steps"] for j in jobs})
    cells: dict[str, dict[int, float]] = defaultdict(dict)
    for j in jobs:
        cells[j["sampler"]][j["steps"]] = j["fid"]
    header = "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [header, "|" + " --- |" * (len(steps) + 1)]
    for sampler in sorted(cells):
        lines.append(
            f"| {sampler} | "
            + " | ".join(f"{cells[sampler][s]:.2f}" if s in cells[sampler] else "" for s in steps)
            + " |"
        )
    net = first.get("feature_network") or {}
    note = (
        f"FID (lower is better) on {net.get('name', 'the feature network')} (sha256 {str(net.get('sha256'))[:12]}...), "
        f"{first.get('num_generated')} generated vs {first.get('num_real')} real ({first.get('real_split')} split of "
        f"{jobs[0]['data']}); comparable: {first.get('comparable')}. Not comparable with published Inception FIDs."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot(jobs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_sampler: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for j in jobs:
        by_sampler[j["sampler"]].append((j["steps"], j["fid"]))
    for sampler, pts in sorted(by_sampler.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=sampler)
    ax.set_xscale("log")
    steps = sorted({j["steps"] for j in jobs})
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID (MNIST classifier features)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class SamplerSweepReport(Callback):
    """Hydra callback of `sweep=ddpm_samplers` (see the module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = collect(sweep_dir)
        if not jobs:
            log.error("Sweep %s: no job wrote test/fid; nothing to tabulate.", sweep_dir)
            return
        try:
            table = fid_table(jobs)
        except ValueError as err:
            log.error("Sweep %s: %s", sweep_dir, err)
            return
        (sweep_dir / "fid_vs_steps.md").write_text(f"# FID vs sampling steps: {sweep_dir}\n\n{table}")
        (sweep_dir / "fid_vs_steps.json").write_text(json.dumps(jobs, indent=2) + "\n")
        plot(
            jobs,
            sweep_dir / "fid_vs_steps.png",
            f"FID vs steps ({jobs[0]['fid_protocol']['num_generated']} samples, embedded data)"
            if "embedded" in str(jobs[0]["data"])
            else "FID vs steps",
        )
        print(
            f"\nFID vs steps ({sweep_dir / 'fid_vs_steps.md'}, plot fid_vs_steps.png):\n{table}", flush=True
        )
