"""Reading a split from folders on disk: the layout's (low folder, high folder) pairs under a root, image
headers (sizes, modes, readability) and, for `experiments.prepare`, every image's pixels."""

from __future__ import annotations

from pathlib import Path

from data.images import ImageReadError, list_images
from data.layouts import FolderPair
from data.lowlight.pairing import ImageRef, Problem, SplitScan, match_by_name


def shown_path(root: Path, p: Path) -> str:
    """`p` relative to the data set root where it lies under it (what messages and item names show)."""
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def scan_folder_pairs(
    root: Path, pairs: tuple[FolderPair, ...], split: str, prefixes: tuple[str, ...]
) -> SplitScan:
    """The pairs of one split: each folder pair's images matched by name; missing folders, unmatched names
    and an empty split are problems of the scan."""
    scan = SplitScan()
    for fp in pairs:
        low_dir, high_dir = root / fp.low, root / fp.high
        missing = [str(d) for d in (low_dir, high_dir) if not d.is_dir()]
        if missing:
            scan.problems.append(Problem("missing", f"{split}: missing folder(s) {', '.join(missing)}"))
            continue
        refs = {}
        for side, d in (("low", low_dir), ("high", high_dir)):
            images, others = list_images(d)
            scan.ignored += [shown_path(root, p) for p in others]
            refs[side] = [ImageRef(shown_path(root, p), path=p) for p in images]
        found, problems = match_by_name(
            refs["low"], refs["high"], f"{split} ({fp.low} | {fp.high})", prefixes, fp.group
        )
        scan.pairs += found
        scan.problems += problems
    if not scan.pairs and not any(p.kind == "missing" for p in scan.problems):
        folders = ", ".join(f"{root / fp.low} + {root / fp.high}" for fp in pairs)
        scan.problems.append(Problem("empty", f"{split}: no image pairs in {folders}"))
    return scan


def check_headers(scan: SplitScan, non_rgb: str) -> None:
    """Reads every header: unreadable files, size mismatches within pairs, non-RGB modes -> problems."""
    for pair in scan.pairs:
        try:
            hl, hh = pair.low.header(), pair.high.header()
        except ImageReadError as err:
            scan.problems.append(Problem("unreadable", str(err)))
            continue
        scan.headers[pair.key] = (hl, hh)
        if hl.size_hw != hh.size_hw:
            scan.problems.append(
                Problem(
                    "size",
                    f"pair {pair.key!r}: {hl.path} is {hl.width}x{hl.height} but {hh.path} is {hh.width}x{hh.height}",
                )
            )
        if non_rgb == "error":
            for h in (hl, hh):
                if h.mode != "RGB":
                    scan.problems.append(
                        Problem("mode", f"{h.path}: mode {h.mode} is not RGB (non_rgb=error)")
                    )


def check_pixels(scan: SplitScan) -> None:
    """Decodes every image (finds truncated files); slow: used by `experiments.prepare`."""
    for pair in scan.pairs:
        for ref in (pair.low, pair.high):
            try:
                ref.read("convert")
            except ImageReadError as err:
                scan.problems.append(Problem("unreadable", str(err)))
