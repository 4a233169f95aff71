"""How the Hydra entry points start and fail: user errors end in one message and exit status 2.

`@entry_point("train")` replaces `@hydra.main(...)`. A mistake the user can fix (a misspelt key, a bad
value, a missing or foreign file: `core.errors.UserError`, Hydra's and OmegaConf's config errors, a
constructor refusing a keyword) prints one message that names the key or file, and the process exits 2
without a traceback. Anything else is a bug and keeps its traceback. `HYDRA_FULL_ERROR=1` or `--debug`
(anywhere on the command line) shows the full trace of every error.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from core.errors import ConfigError, UserError

FULL_TRACE_HINT = "(full traceback: add --debug, or set HYDRA_FULL_ERROR=1)"
_state = {"full": False}
_OURS = "SUITE_SET_HYDRA_FULL_ERROR"  # marks HYDRA_FULL_ERROR as set by this module, not by the user


def full_trace() -> bool:
    """True when the user asked for full tracebacks (`--debug` or HYDRA_FULL_ERROR=1)."""
    return _state["full"] or os.environ.get("SUITE_FULL_ERROR") == "1"


def _take_debug_flag(argv: list[str]) -> bool:
    """Removes `--debug` from argv (Hydra would read it as an override); True if it was there."""
    if "--debug" in argv[1:]:
        argv[1:] = [a for a in argv[1:] if a != "--debug"]
        return True
    return False


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names nearest to a misspelt one (difflib ratio >= 0.6, then a shared prefix)."""
    choices = sorted(set(choices))
    near = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not near:
        near = [c for c in choices if c.startswith(name[:3])][:n]
    return near


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    near = [prefix + c for c in closest(name, choices)]
    if not near:
        return ""
    others = f" (or {', '.join(near[1:])})" if near[1:] else ""
    return f" Did you mean `{near[0]}`?{others}"


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while err is not None and err not in out and len(out) < 8:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


_UNEXPECTED_KW = re.compile(r"(\w[\w.]*)\(\) got an unexpected keyword argument '(\w+)'")
_MISSING_ARG = re.compile(r"(\w[\w.]*)\(\) missing \d+ required (?:positional|keyword-only) arguments?: (.+)")
_FULL_KEY = re.compile(r"full_key: ([\w.\[\]]+)")
_TARGET = re.compile(r"Error in call to target '([\w.]+)'")


def _keyword_message(err: BaseException, text: str) -> str | None:
    """A constructor refusing a config key (`+trainer.max_epoch=1`): name the key and the valid ones."""
    m = _UNEXPECTED_KW.search(text)
    if m is None:
        m2 = _MISSING_ARG.search(text)
        if m2 is None:
            return None
        key = _FULL_KEY.search(text)
        where = f" under `{key.group(1)}`" if key else ""
        return f"the config{where} lacks required argument(s) {m2.group(2)} of {m2.group(1)}."
    bad = m.group(2)
    key = _FULL_KEY.search(text)
    node = key.group(1) if key else None
    target = _TARGET.search(text)
    valid: list[str] = []
    if target:
        valid = _parameters(target.group(1))
    where = f"{node}.{bad}" if node else bad
    hint = did_you_mean(bad, valid, prefix=f"{node}." if node else "")
    return f"`{where}` is not an argument of {target.group(1) if target else m.group(1)}.{hint}"


def _parameters(target: str) -> list[str]:
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        return [p for p in inspect.signature(fn).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # noqa: BLE001 - a suggestion only
        return []


def user_message(err: BaseException) -> str | None:
    """The one-message form of a user error, or None for an exception that is a bug."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        ValidationError,
    )

    chain = _chain(err)
    for e in chain:
        if isinstance(e, UserError):
            return str(e)
    top = chain[0]
    if isinstance(top, InstantiationException):
        msg = _keyword_message(top, str(top))
        if msg:
            return msg
        return None  # a constructor failed for another reason: a bug, keep the trace
    if isinstance(
        top, ConfigCompositionException | MissingConfigException | OverrideParseException
    ) or isinstance(
        top, ConfigKeyError | MissingMandatoryValue | ValidationError | InterpolationResolutionError
    ):
        text = str(top).strip()
        cause = top.__cause__
        if cause is not None and str(cause).strip() and str(cause).strip() not in text:
            text = f"{text}\n{str(cause).strip()}"
        return _compact_options(text)
    return None


def _compact_options(text: str) -> str:
    """Hydra's "Could not find 'experiment/nope'" with its option list on one line, the closest option
    first, and without the config search path."""
    text = text.split("\nConfig search path:")[0].strip()
    m = re.search(
        r"Could not find '([\w/]+)/([\w.-]+)'.*?Available options in '[\w/]+':\s*\n(.*)", text, re.S
    )
    if m is None:
        return text
    group, bad = m.group(1), m.group(2)
    options = [o.strip() for o in m.group(3).splitlines() if o.strip()]
    hint = did_you_mean(bad, options)
    return f"`{group}={bad}`: no such config in configs/{group}/.{hint} Available: {', '.join(options)}."


def _not_in_struct_hint(config_name: str, text: str, overrides: list[str]) -> str:
    """For `Key 'x' is not in struct full_key: a.b.x`: the closest valid keys under a.b."""
    m = re.search(r"full_key: ([\w.]+)", text)
    if "not in struct" not in text or m is None:
        return text
    full_key = m.group(1)
    parent, _, bad = full_key.rpartition(".")
    from omegaconf import DictConfig, OmegaConf

    from runtime.config import compose

    keep = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != full_key]
    try:
        cfg = compose(config_name, keep)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # noqa: BLE001 - the suggestion is best effort
        return text
    if not isinstance(node, DictConfig):
        return text
    valid = [k for k in node.keys() if isinstance(k, str) and not k.startswith("_")]
    hint = did_you_mean(bad, valid, prefix=f"{parent}." if parent else "")
    return (
        f"`{full_key}` is not a key of the {config_name} config.{hint} "
        f"Keys under `{parent or '<root>'}`: {', '.join(sorted(valid))}. "
        f"(`+{full_key}=...` adds a new key, which only works where the target accepts it.)"
    )


def report(message: str) -> None:
    sys.stdout.flush()
    print(f"error: {message}\n{FULL_TRACE_HINT}", file=sys.stderr, flush=True)


def entry_point(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """`hydra.main` for the suite's commands, with the error contract of this module."""
    import hydra

    from runtime.config import config_path

    def decorate(task: Callable[[Any], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def task_reporting(cfg: Any) -> Any:
            try:
                return task(cfg)
            except Exception as err:
                message = user_message(err)
                if message is None or full_trace():
                    raise
                report(message)
                raise SystemExit(UserError.exit_code) from None

        hydra_main = hydra.main(version_base="1.3", config_path=config_path(), config_name=config_name)(
            task_reporting
        )

        @functools.wraps(task)
        def main() -> Any:
            users_hydra_flag = os.environ.get("HYDRA_FULL_ERROR") == "1" and not os.environ.get(_OURS)
            if _take_debug_flag(sys.argv) or users_hydra_flag:
                _state["full"] = True
                os.environ["SUITE_FULL_ERROR"] = "1"  # DDP ranks and launcher jobs re-run the command
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; this module prints
            os.environ[_OURS] = "1"
            try:
                return hydra_main()
            except Exception as err:
                message = user_message(err)
                if message is None or full_trace():
                    raise
                report(_not_in_struct_hint(config_name, message, sys.argv[1:]))
                raise SystemExit(UserError.exit_code) from None

        return main

    return decorate


__all__ = ["ConfigError", "UserError", "closest", "did_you_mean", "entry_point", "full_trace", "user_message"]
