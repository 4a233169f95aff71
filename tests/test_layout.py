"""The layering of the packages (docs/DEVELOPING.md, "Layout"), checked on every import statement, lazy ones
inside functions included:

    core/          leaf: imports no other package of the suite
    data/          DataModules: core only (never lit_modules/, runtime/, experiments/)
    lit_modules/   LightningModules and math: core only (never data/, runtime/, experiments/)
    lit_modules/nets/  plain nn.Modules: core and other nets only (no LightningModule, no pytorch_lightning)
    runtime/       what the commands run on: anything but experiments/
    experiments/   the commands: nothing outside experiments/ imports them
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data", "lit_modules", "runtime", "experiments")

# (importing package prefix, forbidden imported prefixes); the longest matching importer prefix applies
RULES: dict[str, tuple[str, ...]] = {
    "core": ("data", "lit_modules", "runtime", "experiments"),
    "data": ("lit_modules", "runtime", "experiments"),
    "lit_modules": ("data", "runtime", "experiments"),
    "lit_modules.nets": ("data", "runtime", "experiments", "lit_modules", "pytorch_lightning", "lightning"),
    "runtime": ("experiments",),
}
ALLOWED: dict[str, tuple[str, ...]] = {"lit_modules.nets": ("lit_modules.nets",)}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, list[str]]]:
    """(line, absolute module names) of every import statement in `source`, relative imports resolved;
    `from a import b` names both `a` and `a.b` (b may be a module)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            out.append((node.lineno, [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]))
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            rule = max((p for p in RULES if _matches(module, p)), key=len, default=None)
            if rule is None:
                continue
            allowed = ALLOWED.get(rule, ())
            for line, names in imported_modules(path.read_text(), module, path.name == "__init__.py"):
                for name in names:
                    if any(_matches(name, a) for a in allowed) or _matches(name, module):
                        continue
                    bad = next((f for f in RULES[rule] if _matches(name, f)), None)
                    if bad:
                        where = f"{path.relative_to(root)}:{line}"
                        found.append(f"{where}: {module} imports {name} ({rule} -> {bad})")
                        break  # one finding per statement
    return found


def test_no_forbidden_imports():
    assert violations(REPO) == []


@pytest.mark.parametrize(
    "where, source, expected",
    [
        ("data/x.py", "from lit_modules.vae import VAE\n", "data -> lit_modules"),
        ("lit_modules/y.py", "def f():\n    import data.mnist\n", "lit_modules -> data"),
        (
            "lit_modules/nets/z.py",
            "from lit_modules.base import SuiteModule\n",
            "lit_modules.nets -> lit_modules",
        ),
        (
            "lit_modules/nets/z.py",
            "import pytorch_lightning as pl\n",
            "lit_modules.nets -> pytorch_lightning",
        ),
        ("core/w.py", "from runtime import run_dir\n", "core -> runtime"),
        ("runtime/v.py", "from experiments.train import train\n", "runtime -> experiments"),
        ("lit_modules/u.py", "from ..data import mnist\n", "lit_modules -> data"),  # relative import resolved
    ],
)
def test_the_checker_catches_a_forbidden_import(tmp_path, where, source, expected):
    for package in PACKAGES:
        (tmp_path / package / "nets").mkdir(parents=True)
    (tmp_path / where).write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and f"({expected})" in found[0] and where in found[0], found


def test_allowed_imports_pass(tmp_path):
    for package in PACKAGES:
        (tmp_path / package / "nets").mkdir(parents=True)
    (tmp_path / "lit_modules/nets/a.py").write_text("from lit_modules.nets.unet import UNet\nimport torch\n")
    (tmp_path / "lit_modules/b.py").write_text(
        "from core.errors import ConfigError\nfrom lit_modules.nets import a\n"
    )
    (tmp_path / "runtime/c.py").write_text("from data.mnist import MNISTDataModule\n")
    (tmp_path / "experiments/d.py").write_text(
        "from runtime.run import Run\nfrom experiments.train import train\n"
    )
    assert violations(tmp_path) == []
