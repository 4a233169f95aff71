"""What `LowLightDataModule.check()` finds (printed by `python -m experiments.prepare`, also used by the
deblurring DataModule): counts, sizes, modes, conversions and every problem, without raising."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from data.images import converted_lines, name_list
from data.lowlight.pairing import SplitScan, names_shown

CONVERTED_LISTED = 10  # files named in the warning on conversions to 8-bit RGB, then "and N more"


@dataclass
class CheckReport:
    """What a DataModule's `check()` found."""

    root: str
    layout: str
    splits: dict[str, dict[str, Any]]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"data set root: {self.root}", f"layout: {self.layout}"]
        for split, info in self.splits.items():
            sizes = ", ".join(f"{s} x{n}" for s, n in info["sizes"].items()) or "-"
            lines.append(f"  {split}: {info['pairs']} pairs; sizes (w x h): {sizes}")
            for group, n in info.get("groups", {}).items():
                lines.append(f"    {group}: {n} pairs")
            if info.get("modes"):
                lines.append(f"    modes: {info['modes']}")
            if info.get("ignored"):
                lines.append(f"    ignored (not images): {names_shown(info['ignored'], 8)}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def split_summary(scan: SplitScan) -> dict[str, Any]:
    """Pairs, low-image sizes, modes, LSRW groups, ignored files and conversions of one scanned split."""
    out: dict[str, Any] = {
        "pairs": len(scan.pairs),
        "sizes": dict(Counter(f"{h[0].width}x{h[0].height}" for h in scan.headers.values()).most_common()),
        "modes": dict(Counter(h.mode for pair in scan.headers.values() for h in pair)),
        "groups": dict(Counter(p.group for p in scan.pairs if p.group)),
        "ignored": scan.ignored,
    }
    converted = converted_lines([h for pair in scan.headers.values() for h in pair])
    if converted:
        out["converted"] = converted  # every file, in check.json
    return out


def check_report(scans: dict[str, SplitScan], root: str, layout: str, non_rgb: str) -> CheckReport:
    splits, problems, warns = {}, [], []
    for split, scan in scans.items():
        splits[split] = split_summary(scan)
        problems += [p.message for p in scan.problems]
        converted = splits[split].get("converted")
        if converted and non_rgb == "convert":
            warns.append(
                f"{split}: {len(converted)} image(s) are not 8-bit RGB and will be converted "
                f"(non_rgb=convert):\n    " + name_list(converted, CONVERTED_LISTED, "\n    ")
            )
    if "test" not in scans:
        problems.append("no test split")
    return CheckReport(root, layout, splits, problems, warns)
