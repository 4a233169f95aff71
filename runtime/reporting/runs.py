"""The run directories a report reads: `RunRecord` (run_info.json + metrics.json of one run), `find_runs`, and
the protocol check that keeps numbers measured under different protocols out of one column."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError, MissingFileError
from runtime import run_dir as rd
from runtime.results import data_kind
from runtime.run import switch_overrides


class ReportError(InputError):
    """The runs cannot be reported as asked (none found, incomparable protocols, ...)."""


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class RunRecord:
    path: Path
    info: dict[str, Any]
    metrics: dict[str, float]
    protocol: dict[str, Any]
    data: dict[str, Any] | None
    setting: tuple[
        str, ...
    ] = ()  # the switches that vary among the runs reported together (set by the report)

    @property
    def experiment(self) -> str:
        return str(self.info.get("experiment") or "unknown")

    @property
    def status(self) -> str:
        """The recorded status; a `running` record whose process is gone reads `killed` (runtime/run_dir.py)."""
        return rd.recorded_status(self.path, self.info)

    @property
    def status_text(self) -> str:
        """The status, and those of the invocations after a completed run that did not complete (run_info.json
        `later_invocations`: they left the completed run's record and metrics.json as they were)."""
        later = [rd.recorded_status(self.path, inv) for inv in self.info.get("later_invocations") or []]
        return f"{self.status} (later: {', '.join(later)})" if later else self.status

    @property
    def seed(self) -> Any:
        """The recorded seed (run_info.json), else a `seed=` override; None when neither says."""
        seed = self.info.get("seed")
        if seed is None:
            for o in self.info.get("overrides") or []:
                key, _, value = o.lstrip("+~").partition("=")
                if key == "seed" and value:
                    seed = value
        return seed

    @property
    def seed_text(self) -> str:
        return "?" if self.seed is None else str(self.seed)

    @property
    def switches(self) -> tuple[str, ...]:
        """What this run changed relative to its experiment's config, seed excluded."""
        return tuple(
            sorted(
                o
                for o in switch_overrides(self.info.get("overrides"))
                if o.split("=", 1)[0].lstrip("+~") != "seed"
            )
        )

    @property
    def job_overrides(self) -> tuple[str, ...]:
        """What this job was given on top of the config, seed and `experiment=` included (the sweep summary)."""
        given = self.info.get("overrides") or []
        keep = set(switch_overrides(given))
        return tuple(sorted(o for o in given if o in keep or o.lstrip("+~").split("=", 1)[0] == "experiment"))

    @property
    def switch_keys(self) -> set[str]:
        """The override's key and each of its parts: `model.components.nrn=false` and the config-group
        choice `model/components=no_nrn` both name the protocol entry `components` as a varied field."""
        keys = set()
        for o in self.switches:
            key = o.split("=", 1)[0].lstrip("+~")
            keys |= {key, *key.replace("/", ".").split(".")}
        return keys

    @property
    def data_kind(self) -> str:
        """`synthetic`, `real-subset`, `real-custom`, `real` or `unknown` (runtime.results.DATA_KINDS)."""
        return data_kind(self.data)

    @property
    def synthetic(self) -> bool:
        return self.data_kind == "synthetic"

    @property
    def comparable(self) -> bool:
        """Numbers on the full real data set that the data module itself calls comparable with papers."""
        return self.data_kind == "real" and bool((self.data or {}).get("comparable_with_papers", False))

    @property
    def data_label(self) -> str:
        return str((self.data or {}).get("label", "unknown data"))

    @property
    def commit(self) -> str:
        git = self.info.get("git") or {}
        commit = (git.get("commit") or "unknown")[:10]
        return commit + ("+dirty" if git.get("dirty") else "")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_runs(dirs: list[Path], strict: bool = True) -> list[RunRecord]:
    """Every run directory (one holding run_info.json) under `dirs`, W&B's own folders skipped."""
    runs = []
    for d in dirs:
        if not d.exists():
            raise MissingFileError(f"{d} does not exist; expected a run directory or a sweep directory")
        for info_path in sorted(d.rglob("run_info.json")):
            if "wandb" in info_path.relative_to(d).parts:
                continue
            info = _read_json(info_path)
            if info is None:
                raise ReportError(f"{info_path} is not valid JSON")
            if info.get("overrides") is None:  # not recorded: Hydra's own copy of the job's overrides
                hydra_overrides = info_path.parent / ".hydra" / "overrides.yaml"
                try:
                    info["overrides"] = list(yaml.safe_load(hydra_overrides.read_text()) or [])
                except (OSError, yaml.YAMLError):
                    pass
            body = _read_json(info_path.parent / "metrics.json") or {}
            metrics = {
                k: float(v)
                for k, v in body.items()
                if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            data = body.get("data") or info.get("data")
            runs.append(RunRecord(info_path.parent, info, metrics, body.get("protocol") or {}, data))
    if strict and not runs:
        raise ReportError(f"no run directories (with run_info.json) under {', '.join(map(str, dirs))}")
    return runs


# ------------------------------------------------------------------------------------------------ protocol
def protocol_fingerprint(run: RunRecord, metric: str) -> dict[str, str]:
    """The protocol fields that bear on `metric`: general fields plus the metric's own entry, and the data
    the number was computed on; fields named by the run's own switches are left out (they are the setting)."""
    varied = run.switch_keys
    out = {}
    for key, value in run.protocol.items():
        if "/" in key and key != metric:
            continue  # another metric's entry
        if key in varied:
            continue
        out[key] = json.dumps(value, sort_keys=True)
    if "data" not in varied and not (varied & {"source", "path", "hub_id"}):
        out["data"] = run.data_label
    return out


def check_one_protocol(metric: str, runs: list[RunRecord]) -> None:
    first = runs[0]
    ref = protocol_fingerprint(first, metric)
    for run in runs[1:]:
        fp = protocol_fingerprint(run, metric)
        if fp != ref:
            keys = sorted(k for k in set(ref) | set(fp) if ref.get(k) != fp.get(k))
            detail = "; ".join(f"{k}: {ref.get(k, '(absent)')} vs {fp.get(k, '(absent)')}" for k in keys[:4])
            raise ReportError(
                f"{metric}: {first.path} and {run.path} were measured under different protocols ({detail}). "
                "Refusing to put them in one column: report them separately, or re-evaluate them under one protocol."
            )
