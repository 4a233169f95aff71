"""NeRCo cost figures on this machine: training iteration time and peak memory at 256x256 crops per variant,
and full-resolution inference: NeRCo's released inference as released beside the suite's `enhance` path.

    python -m experiments.benchmark nerco [--what train infer] [--size 256 --steps 1 --variants official paper]
                                          [--sizes 600x400 960x720 --chunks 0 65536 --repeats 1]
                                          [--threads 1] [--no-released-full] [--no-profile] [--quick]

Inference, one table per size, rows on the same seeded random weights and the same image:
- `released, literal` (the baseline of every ratio): `lit_modules.nerco_reference.released_literal_enhance`,
  the released test step with its NRN evaluating the four local-ensemble terms, fp32, the whole image at once;
- `released test.py forward`: the same plus what the released `forward()` also computes at test time and
  discards (G_L twice, a second NRN, rec_B): what `test.py` costs;
- `suite defaults`: `NeRCo.enhance`'s code (`nerco_inference.enhance_image`) with the module's default
  settings (the NRN's exact single-term path, its default chunking, fp32), under `torch.inference_mode`, as
  `experiments.enhance` runs it (`NeRCo.for_inference`: channels-last weights and images);
- `suite defaults + bf16 autocast`, `suite defaults, channel-first` (the same without `for_inference`, as
  validation during training runs it), the suite with other `--chunks`, and the released and suite-default
  paths under `torch.set_num_threads(t)` for each `--threads t` (a machine setting, not a suite default);
- then a torch.profiler breakdown of one suite-default pass (per network stage, top operators).
Columns: wall time, peak resident set and working memory (peak minus the resident size before the work),
their ratios to the released row, and the largest / mean |difference| of the uint8 outputs (the released
quantisation, `released_uint8`) in grey levels. `--quick`: inference only at 96x64.

Each measurement runs in a fresh subprocess (`python -m experiments.benchmarks.nerco _one ...`). Memory is
the process's peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which covers torch's CPU
allocations as well as Python's). Training rows: random weights; the text-driven discriminator uses the
`random` backend with the full RN50 image tower (`--text-arch rn50`: the compute of CLIP RN50, no pretrained
weights). Timings are wall clock: on a shared machine, run it when idle (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.benchmarks.common import (
    add_bf16_argument,
    bf16_rows_skipped,
    image_size,
    non_negative_int,
    positive_int,
    print_table,
    write_results,
)
from lit_modules.nerco_options import VARIANTS  # torch only, no Lightning


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_train(variant: str, size: int, steps: int, text_arch: str) -> dict[str, Any]:
    """One warm-up iteration, then `steps` timed iterations of `NeRCo.training_step` through a Trainer."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from lit_modules.nerco import NeRCo

    class Crops(Dataset):
        def __len__(self) -> int:
            return steps + 1

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            return {k: torch.rand(3, size, size, generator=g) * 2 - 1 for k in ("A", "B")}

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.rss_before: float | None = None

        def on_train_batch_start(self, *args: Any) -> None:
            if self.rss_before is None:
                self.rss_before = _current_rss_mb()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    torch.manual_seed(0)
    model = NeRCo(variant=variant, text_discriminator={"backend": "random", "arch": text_arch})
    timer = Timer()
    trainer = pl.Trainer(
        max_steps=2
        * (steps + 1),  # manual optimisation: global_step counts optimizer steps, two per iteration
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(model, DataLoader(Crops(), batch_size=1))
    return {
        "kind": "train",
        "what": f"training iteration, variant={variant}, batch 1, {size}x{size}, text tower {text_arch}",
        "first_iteration_s": round(timer.times[0], 2),
        "iteration_s": [round(t, 2) for t in timer.times[1:]],
        "rss_before_first_step_mb": round(timer.rss_before or float("nan")),
        "peak_rss_mb": round(_rss_mb()),
        "threads": torch.get_num_threads(),
    }


INFER_SEED = 0  # the random weights (N(0, 0.02), biases 0: the released init) of every inference row
# inference rows: (key, label, settings); `released*` run lit_modules.nerco_reference, `suite*` NeRCo.enhance's
# code (lit_modules.nerco_inference.enhance_image) on the same networks
RELEASED = "released"


def infer_rows(
    chunks: list[int],
    full_forward: bool,
    default_chunk: int | None,
    threads: list[int] | None = None,
    bf16: bool = True,
) -> list[dict[str, Any]]:
    """The inference rows of one size; the first is the baseline. `threads`: extra rows of the released and
    the suite-default paths under torch.set_num_threads(t) (not a suite default); `bf16`: the bf16 row."""
    rows = [{"key": RELEASED, "label": "released, literal (NRN 4 terms, fp32, one pass)"}]
    if full_forward:
        rows.append(
            {"key": "released_full", "label": "released test.py forward (+ G_L, 2nd NRN, rec_B; discarded)"}
        )
    rows.append(
        {"key": "suite", "label": f"suite defaults (1 term, chunk {default_chunk}, fp32)", "chunk": None}
    )
    if bf16:
        label = "suite defaults + bf16 autocast"
        rows.append({"key": "suite_bf16", "label": label, "chunk": None, "bf16": True})
    rows.append({"key": "suite_nchw", "label": "suite defaults, channel-first (no for_inference)", "chunk": None})
    for c in chunks:
        if (c or None) != default_chunk:
            label = "suite, NRN in one pass" if not c else f"suite, chunk {c}"
            rows.append({"key": f"suite_chunk{c}", "label": label, "chunk": c})
    for t in threads or []:
        rows.append(
            {"key": f"released_threads{t}", "label": f"released, literal, {t} torch thread(s)", "threads": t}
        )
        rows.append(
            {"key": f"suite_threads{t}", "label": f"suite defaults, {t} torch thread(s)", "threads": t}
        )
    return rows


def infer_input(width: int, height: int) -> Any:
    """The benchmark image: skimage's astronaut photo (shipped in the wheel), PIL-bicubic resized to width x
    height and darkened to a quarter (a low-light input), then the released test loader's tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    from data.photos import load_photo
    from lit_modules.nerco_release import released_input

    img = Image.fromarray(load_photo("astronaut")).resize((width, height), Image.BICUBIC)
    dark = (np.asarray(img, dtype=np.float32) * 0.25).astype(np.uint8)
    return released_input(Image.fromarray(dark))


def measure_infer(
    key: str,
    width: int,
    height: int,
    chunk: int | None,
    bf16: bool,
    repeats: int,
    out_npy: str,
    resize: str = "round_to_4",
    threads: int = 0,
) -> dict[str, Any]:
    """One inference row on the benchmark image, NeRCo's full widths with seeded random weights, batch 1; the
    output quantised as released (`released_uint8`) is saved to `out_npy` for the comparison. Every row imports
    the same modules (torch and the suite's plain inference functions, no Lightning), so the resident sizes
    before the work agree; `chunk`, `resize`: the suite rows' NRN chunking (None: one pass) and size rule;
    `threads` > 0: torch.set_num_threads(threads) first."""
    import numpy as np
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from lit_modules.nerco_inference import channels_last_networks, enhance_image
    from lit_modules.nerco_objectives import generator_input
    from lit_modules.nerco_reference import released_literal_enhance
    from lit_modules.nerco_release import inference_memory_estimate_mb, released_uint8
    from lit_modules.nets.cyclegan import ResnetGenerator
    from lit_modules.nets.nerco import NRN, MaskExtractor

    torch.manual_seed(INFER_SEED)
    g_a, pre, h = ResnetGenerator(6).eval(), NRN().eval(), MaskExtractor().eval()
    g_b = ResnetGenerator(3).eval() if key == "released_full" else None  # not loaded at test time: random
    x = infer_input(width, height)
    if key.startswith("suite"):
        channels_last = key != "suite_nchw"
        if channels_last:  # as experiments.enhance prepares NeRCo (NeRCo.for_inference)
            channels_last_networks(g_a, pre, h)

        def forward(t: torch.Tensor) -> torch.Tensor:  # NeRCo.forward on these networks, in its order
            mask = h.mask(t)
            return g_a(generator_input(t, pre(t), mask))

        def work() -> torch.Tensor:
            with torch.inference_mode():  # as experiments.enhance runs NeRCo.enhance
                return (enhance_image(forward, pre, x, chunk, resize, bf16, channels_last) + 1) / 2

        what = (
            f"NeRCo.enhance code, nrn_chunk_pixels={chunk}, inference_bf16={bf16}, channels_last={channels_last}"
        )
    else:
        chunk = None
        real_b = torch.flip(x, dims=[-1])  # the released forward's testB image (unused by fake_B)

        def work() -> torch.Tensor:
            return released_literal_enhance(g_a, pre, h, x, key == "released_full", g_b, real_b)

        what = "lit_modules.nerco_reference.released_literal_enhance" + (
            " (full_forward)" if key == "released_full" else ""
        )
    rss0 = _current_rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = work()
        times.append(time.perf_counter() - t0)
    peak = _rss_mb()
    assert y.shape == (1, 3, height, width) and y.dtype == torch.float32
    np.save(out_npy, released_uint8(y))
    return {
        "kind": "infer",
        "key": key,
        "size": f"{width}x{height}",
        "what": what,
        "seconds": [round(t, 3) for t in times],
        "rss_before_mb": round(rss0),
        "peak_rss_mb": round(peak),
        "working_memory_mb": round(peak - rss0),
        "estimate_mb": round(inference_memory_estimate_mb(height, width, chunk_pixels=chunk))
        if key.startswith("suite")
        else None,
        "threads": torch.get_num_threads(),
        "output": out_npy,
    }


def profile_suite(width: int, height: int, chunk: int | None, resize: str) -> dict[str, Any]:
    """Where the suite default's time goes: one `enhance_image` pass (same weights and image as the table)
    under torch.profiler, seconds per network stage and the operators with the most self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from lit_modules.nerco_inference import channels_last_networks, enhance_image
    from lit_modules.nerco_objectives import generator_input
    from lit_modules.nets.cyclegan import ResnetGenerator, run_layers
    from lit_modules.nets.nerco import NRN, MaskExtractor

    torch.manual_seed(INFER_SEED)
    g_a, pre, h = ResnetGenerator(6).eval(), NRN().eval(), MaskExtractor().eval()
    channels_last_networks(g_a, pre, h)
    x = infer_input(width, height)
    stages = ("NRN trunk", "NRN head (1 term)", "mask extractor", "G_H")

    def forward(t: torch.Tensor) -> torch.Tensor:
        with record_function(stages[2]):
            mask = h.mask(t)
        with record_function(stages[0]):
            feat = run_layers(pre.model, t)
        with record_function(stages[1]):
            pre_x = pre.mlp(feat, pre.coordinates, pre.chunk_pixels)
            del feat
        with record_function(stages[3]):
            return g_a(generator_input(t, pre_x, mask))

    t0 = time.perf_counter()
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        enhance_image(forward, pre, x, chunk, resize, channels_last=True)
    total = time.perf_counter() - t0
    events = prof.key_averages()
    by_stage = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in stages}
    ops = sorted((e for e in events if e.key not in stages), key=lambda e: -e.self_cpu_time_total)
    return {
        "kind": "profile",
        "size": f"{width}x{height}",
        "seconds": round(total, 3),
        "stages_s": {k: round(by_stage.get(k, 0.0), 3) for k in stages},
        "top_ops_self_s": {e.key: round(e.self_cpu_time_total / 1e6, 3) for e in ops[:6]},
    }


def _profile_table(prof: dict[str, Any]) -> None:
    total = prof["seconds"]
    rows = [(f"stage: {k}", f"{v:.2f}", f"{100 * v / total:.0f} %") for k, v in prof["stages_s"].items()]
    rows += [
        (f"op (self): {k}", f"{v:.2f}", f"{100 * v / total:.0f} %") for k, v in prof["top_ops_self_s"].items()
    ]
    print(
        f"where the suite defaults' time goes at {prof['size']} (torch.profiler, one pass of {total:.2f} s):"
    )
    print_table(rows, ("part", "s", "share"))


def compare_outputs(released_npy: str, other_npy: str) -> dict[str, float]:
    """Largest and mean |difference| in grey levels between two uint8 outputs (after the released
    quantisation), and the fraction of values that differ."""
    import numpy as np

    a = np.load(released_npy).astype(np.int16)
    b = np.load(other_npy).astype(np.int16)
    d = np.abs(a - b)
    return {"max_diff": int(d.max()), "mean_diff": float(d.mean()), "frac_differ": float((d > 0).mean())}


def _spawn(args: list[str]) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.nerco", "_one", *args], capture_output=True, text=True
    )
    if res.returncode != 0:
        return {"args": args, "error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--what", nargs="+", choices=["train", "infer"], default=["train", "infer"], help="which figures"
    )
    p.add_argument("--size", type=positive_int, default=256, help="training crop side (default 256)")
    p.add_argument(
        "--steps", type=positive_int, default=1, help="timed training iterations after one warm-up"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="model variants to train",
    )
    p.add_argument("--text-arch", default="rn50", choices=["rn50", "tiny"], help="random text tower")
    p.add_argument(
        "--sizes", nargs="+", type=image_size, default=["600x400", "960x720"], help="inference sizes WxH"
    )
    p.add_argument(
        "--chunks",
        nargs="+",
        type=non_negative_int,
        default=[0, 65536],
        help="extra suite rows with these NRN chunk_pixels (0: one pass) beside the default",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=1, help="timed inference passes per row (the fastest counts)"
    )
    p.add_argument(
        "--no-released-full",
        dest="released_full",
        action="store_false",
        help="skip the row of the released test.py forward (which also runs G_L and the second loop)",
    )
    p.add_argument(
        "--threads",
        nargs="*",
        type=positive_int,
        default=[1],
        help="extra released and suite-default rows under torch.set_num_threads(t) (none: no such rows)",
    )
    p.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the torch.profiler breakdown of the suite defaults at each size",
    )
    p.add_argument(
        "--quick", action="store_true", help="inference only, at 96x64 (a smoke test of the whole benchmark)"
    )
    add_bf16_argument(p)
    p.add_argument("--output-dir", default=None, help="where benchmark_nerco.json goes (default: a temp dir)")


TARGETS = {"time_ratio": 1 / 3, "peak_ratio": 1 / 4, "max_diff": 1}  # suite defaults vs released, literal


def suite_defaults() -> tuple[int | None, str]:
    """`NeRCo`'s default `nrn_chunk_pixels` and `inference_resize` (what `enhance` runs unless told)."""
    import inspect

    from lit_modules.nerco import NeRCo

    params = inspect.signature(NeRCo.__init__).parameters
    return params["nrn_chunk_pixels"].default, params["inference_resize"].default


def _infer_size(size: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Every inference row at one size, each in a fresh process, then the ratios and output differences
    against the released, literal row."""
    default_chunk, resize = suite_defaults()
    w, h = size.split("x")
    rows = []
    with_bf16 = args.bf16_skipped is None
    for spec in infer_rows(args.chunks, args.released_full, default_chunk, args.threads, with_bf16):
        chunk = default_chunk if spec.get("chunk") is None else (spec["chunk"] or None)
        npy = str(out / f"output_{size}_{spec['key']}.npy")
        bf16 = str(int(spec.get("bf16", False)))
        chunk_arg = "-" if chunk is None or spec["key"].startswith("released") else str(chunk)
        threads = str(spec.get("threads", 0))
        r = _spawn(["infer", spec["key"], w, h, chunk_arg, bf16, str(args.repeats), npy, resize, threads])
        r.update(label=spec["label"], size=size, key=spec["key"], kind="infer")
        rows.append(r)
        print(json.dumps(r), flush=True)
    if args.profile:
        prof = _spawn(["profile", w, h, "-" if default_chunk is None else str(default_chunk), resize])
        prof.update(kind="profile", key="profile", label="profile of the suite defaults", size=size)
        print(json.dumps(prof), flush=True)
        rows.append(prof)
    base = rows[0]
    for r in rows:
        if "error" in r or "error" in base or r["key"] == "profile":
            continue
        r["time_ratio"] = min(r["seconds"]) / min(base["seconds"])
        r["peak_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        r["working_ratio"] = r["working_memory_mb"] / max(base["working_memory_mb"], 1)
        r.update(compare_outputs(base["output"], r["output"]))
    return rows


def _infer_table(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    def fmt(r: dict[str, Any], key: str, spec: str) -> str:
        return format(r[key], spec) if key in r else "-"

    table = []
    for r in rows:
        if r["key"] == "profile":
            continue
        if "error" in r:
            table.append((r["label"], "failed", r["error"].strip().splitlines()[-1][:60], *[""] * 6))
            continue
        table.append(
            (
                r["label"],
                f"{min(r['seconds']):.2f}",
                f"{r['peak_rss_mb']}",
                f"{r['working_memory_mb']}",
                fmt(r, "time_ratio", ".3f"),
                fmt(r, "peak_ratio", ".3f"),
                fmt(r, "working_ratio", ".3f"),
                fmt(r, "max_diff", "d"),
                fmt(r, "mean_diff", ".4f"),
            )
        )
    return table


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    suite = next((r for r in rows if r.get("key") == "suite" and "error" not in r), None)
    if suite is None:
        return {}
    return {
        "time_ratio": suite["time_ratio"] <= TARGETS["time_ratio"],
        "peak_ratio": suite["peak_ratio"] <= TARGETS["peak_ratio"],
        "working_ratio": suite["working_ratio"] <= TARGETS["peak_ratio"],
        "max_diff": suite["max_diff"] <= TARGETS["max_diff"],
    }


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_nerco_"))
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.what, args.sizes = ["infer"], ["96x64"]
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    if "train" in args.what:
        for v in args.variants:
            results.append(_spawn(["train", v, str(args.size), str(args.steps), args.text_arch]))
            print(json.dumps(results[-1]), flush=True)
    inference: dict[str, list[dict[str, Any]]] = {}
    args.bf16_skipped = bf16_rows_skipped(args.bf16) if "infer" in args.what else None
    if args.bf16_skipped:
        print(f"bf16 autocast row skipped: {args.bf16_skipped}")
    if "infer" in args.what:
        for s in args.sizes:
            inference[s] = _infer_size(s, args, out)
    load_after = os.getloadavg()
    if results:
        _train_table(results)
    verdicts = {}
    for s, rows in inference.items():
        print(
            f"\nNeRCo inference {s}, batch 1, CPU, {rows[0].get('threads', '?')} torch threads; RANDOM weights "
            f"(seed {INFER_SEED}, the released N(0, 0.02) init), the same weights and image (skimage astronaut "
            "resized, darkened x0.25) in every row; each row a fresh process; time = fastest of "
            f"{args.repeats} pass(es); memory in MiB: peak resident set, and working = peak minus resident before "
            "the work; ratios and |diff| (grey levels of the uint8 outputs, released quantisation) vs the first row:"
        )
        print_table(
            _infer_table(rows),
            (
                "row",
                "time s",
                "peak MiB",
                "working MiB",
                "time ratio",
                "peak ratio",
                "working ratio",
                "max |diff|",
                "mean |diff|",
            ),
        )
        prof = next((r for r in rows if r["key"] == "profile" and "error" not in r), None)
        if prof is not None:
            _profile_table(prof)
        verdicts[s] = _verdict(rows)
        if verdicts[s]:
            print(
                "suite defaults vs targets (time <= 1/3, peak memory <= 1/4, max |diff| <= 1): "
                + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in verdicts[s].items())
            )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    all_rows = results + [r for rows in inference.values() for r in rows]
    write_results(
        out / "benchmark_nerco.json",
        {
            "results": results,
            "inference": inference,
            "targets": TARGETS,
            "verdicts": verdicts,
            "weights": f"random, torch.manual_seed({INFER_SEED}), released init N(0, 0.02)",
            "image": "skimage astronaut, PIL bicubic to each size, x0.25, released_input",
            "load_before": load_before,
            "load_after": load_after,
            "bf16_skipped": args.bf16_skipped,
        },
    )
    print(f"Results: {out / 'benchmark_nerco.json'}")
    return 1 if any("error" in r for r in all_rows) else 0


def _train_table(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        if "error" in r:
            rows.append((" ".join(r["args"]), "failed", "", r["error"].strip().splitlines()[-1][:60]))
            continue
        its = r["iteration_s"] or [r["first_iteration_s"]]
        rows.append(
            (
                r["what"],
                f"{sorted(its)[len(its) // 2]:.1f} s (first {r['first_iteration_s']:.1f} s)",
                f"{r['peak_rss_mb'] / 1024:.2f} GiB",
                f"{r['rss_before_first_step_mb'] / 1024:.2f} GiB",
            )
        )
    print("\nNeRCo training on this machine (random weights; peak = peak resident set of a fresh process):")
    print_table(rows, ("what", "time", "peak memory", "resident before the first step"))


def _one(argv: list[str]) -> None:
    kind, *p = argv
    if kind == "train":
        out = measure_train(p[0], int(p[1]), int(p[2]), p[3])
    elif kind == "profile":
        out = profile_suite(int(p[0]), int(p[1]), None if p[2] == "-" else int(p[2]), p[3])
    else:
        key, w, h, chunk, bf16, repeats, npy, resize, threads = p
        c = None if chunk == "-" else int(chunk)
        out = measure_infer(key, int(w), int(h), c, bf16 == "1", int(repeats), npy, resize, int(threads))
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        _one(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks.nerco", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
