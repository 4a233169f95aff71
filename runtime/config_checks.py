"""Checks of a composed config that run before an entry point does any work or writes anything.

Each refusal is a `core.errors.ConfigError` naming the key, the value and what was expected; the entry
points print it alone and exit 2 (`runtime.cli`).
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig

from core.errors import ConfigError
from runtime.cli import did_you_mean


def _accepts(value: Any, hint: Any) -> bool:
    """Whether a config value (a YAML scalar, list or dict) can be an argument of type `hint`. Types that a
    config cannot spell (a class instance: a Strategy, a Logger) accept anything: the constructor decides."""
    origin = typing.get_origin(hint)
    if origin is Union or (origin is None and type(hint).__name__ == "UnionType"):
        return any(_accepts(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, ListConfig | list | tuple)
    if origin is dict or hint is dict:
        return isinstance(value, DictConfig | dict)
    return True  # a class a config cannot spell (a Strategy, a Path): the constructor decides


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _spell(hint: Any) -> str:
    """`Optional[int]` -> "an integer or null"; literals are listed."""
    origin = typing.get_origin(hint)
    if origin is Union or (origin is None and type(hint).__name__ == "UnionType"):
        words = list(dict.fromkeys(_spell(h) for h in typing.get_args(hint)))
        return " or ".join(words)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def check_arguments(node: DictConfig, key: str, target: Any, skip: tuple[str, ...] = ()) -> None:
    """Every entry of `node` (the config of `key`) must be an argument of `target` with a value of its type."""
    params = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check the names only
        hints = {}
    for name in node:
        if not isinstance(name, str) or name.startswith("_") or name in skip:
            continue
        if name not in params:
            raise ConfigError(
                f"`{key}.{name}` is not an argument of {target.__name__}."
                f"{did_you_mean(name, [p for p in params if p != 'self'], prefix=f'{key}.')}"
            )
        try:
            value = node[name]
        except Exception:  # noqa: BLE001 - an interpolation that resolves only later
            continue
        if name in hints and not _accepts(value, hints[name]):
            raise ConfigError(f"`{key}.{name}={value!r}`: expected {_spell(hints[name])}.")


def check_seed(cfg: DictConfig) -> None:
    if "seed" not in cfg:
        return
    seed = cfg.seed
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"`seed={seed!r}`: expected an integer (e.g. seed=0).")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"`seed={seed}`: expected an integer in [0, 2**32).")


def check_trainer(cfg: DictConfig) -> None:
    """`trainer.*` against `pytorch_lightning.Trainer`'s signature: names (with the closest valid ones) and
    value types (`trainer.max_epochs=abc` would otherwise end in a bare AssertionError mid-fit)."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or "_target_" not in trainer:
        return
    import pytorch_lightning as pl

    if str(trainer._target_) not in (
        "pytorch_lightning.Trainer",
        "pytorch_lightning.trainer.trainer.Trainer",
    ):
        return
    check_arguments(trainer, "trainer", pl.Trainer, skip=("callbacks", "logger", "plugins"))
    for name in ("max_epochs", "min_epochs", "num_nodes", "log_every_n_steps", "accumulate_grad_batches"):
        value = trainer.get(name)
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value < (1 if name != "max_epochs" else -1)
        ):
            raise ConfigError(f"`trainer.{name}={value}`: expected a positive integer.")
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches"):
        value = trainer.get(name)
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"`trainer.{name}={value}`: a float is a fraction of the split in [0, 1]; an int counts batches."
            )


def check_data(cfg: DictConfig) -> None:
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return
    for name, low in (("batch_size", 1), ("eval_batch_size", 1), ("num_workers", 0)):
        if name not in data or data[name] is None:
            continue
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            want = "a positive integer" if low else "an integer >= 0"
            raise ConfigError(f"`data.{name}={value!r}`: expected {want}.")


def check_ckpt_path(cfg: DictConfig) -> None:
    """`ckpt_path` names an existing file (or `last`); the checkpoint itself is checked when it is loaded."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None or str(ckpt) == "last":
        return
    from core.errors import MissingFileError

    path = Path(str(ckpt))
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt")) or sorted(
            str(p.relative_to(path)) for p in path.glob("checkpoints/*.ckpt")
        )
        hint = f" It holds: {', '.join(found[:6])}." if found else " It holds no .ckpt file."
        raise MissingFileError(f"`ckpt_path={ckpt}` is a folder; expected a .ckpt file.{hint}")
    if not path.is_file():
        raise MissingFileError(f"`ckpt_path={ckpt}`: no such file.")


def check_config(cfg: DictConfig) -> None:
    """All of the above, for whichever keys this entry point's config has."""
    check_seed(cfg)
    check_trainer(cfg)
    check_data(cfg)
    check_ckpt_path(cfg)
