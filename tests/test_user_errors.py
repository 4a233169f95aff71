"""Bad input across the commands: one message naming the key or file, exit status 2, no traceback, and
nothing written (a refused command leaves an existing run directory's files as they were).

The commands run in-process (`main()` with a patched argv, output captured at the file descriptors), which
is what `python -m experiments.<name>` runs; one case per entry point also runs as a real subprocess.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import run_cli


def invoke(module: str, *args: str) -> int:
    """Runs `python -m experiments.<module> args...` in this process; returns the exit status."""
    from runtime import cli

    mod = importlib.import_module(f"experiments.{module}")
    argv = sys.argv
    sys.argv = [f"experiments/{module}.py", *args]
    try:
        mod.main() if module != "report" else sys.exit(mod.main(list(args)))
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
        cli._state["full"] = False


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("HYDRA_FULL_ERROR", "SUITE_FULL_ERROR", "SUITE_SET_HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints and folders the bad inputs point at: a VAE and a DDPM checkpoint with the suite's record
    (random weights: what matters is what they are), a corrupt file, a foreign pickle, an empty folder."""
    from runtime.config import compose

    root = tmp_path_factory.mktemp("bad_inputs")
    out: dict[str, Path] = {}
    for name, experiment, cls in (
        ("vae", "vae_mnist", "lit_modules.vae.VAE"),
        ("ddpm", "ddpm_mnist", "lit_modules.ddpm.DDPM"),
    ):
        cfg = compose("train", [f"experiment={experiment}"], output_dir=root / f"compose_{name}")
        from hydra.utils import instantiate

        model = instantiate(cfg.model)
        record = {
            "model_class": cls,
            "experiment": experiment,
            "model_config": OmegaConf.to_yaml(cfg.model, resolve=True),
            "data_config": OmegaConf.to_yaml(cfg.data, resolve=True),
        }
        out[name] = root / f"{name}.ckpt"
        torch.save({"state_dict": model.state_dict(), "suite": record}, out[name])
    out["corrupt"] = root / "corrupt.ckpt"
    out["corrupt"].write_bytes(b"this is not a checkpoint\n" * 10)
    out["foreign"] = root / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, out["foreign"])
    out["pickle"] = root / "pickle.ckpt"
    torch.save(
        {"state_dict": {}, "obj": Path("x")}, out["pickle"]
    )  # a non-tensor object: weights_only refuses
    out["empty"] = root / "empty"
    out["empty"].mkdir()
    out["images"] = root / "images"
    out["images"].mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (40, 40, 40)).save(out["images"] / "a.png")
    return out


def existing_run(tmp_path: Path) -> Path:
    """A completed run directory whose files a refused command must not touch."""
    run = tmp_path / "existing"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run_info.json").write_text(json.dumps({"status": "completed", "task": "train"}))
    (run / "metrics.json").write_text(json.dumps({"test/elbo": 1.0}))
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory but Hydra's own (`.hydra/` and the job log `<task>.log`, which Hydra
    writes before any code of the suite runs)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file()
        and ".hydra" not in p.relative_to(run).parts
        and not (p.parent == run and p.suffix == ".log")
    }


# (command, arguments with {placeholders}, text the message must contain)
CASES = [
    # train: keys and values
    ("train", ["experiment=vae_mnist", "seed=abc"], "`seed='abc'`: expected an integer"),
    ("train", ["experiment=vae_mnist", "seed=-1"], "`seed=-1`"),
    ("train", ["experiment=vae_mnist", "trainer.max_epoch=1"], "Did you mean `trainer.max_epochs`?"),
    ("train", ["experiment=vae_mnist", "+trainer.max_epoch=1"], "Did you mean `trainer.max_epochs`?"),
    (
        "train",
        ["experiment=vae_mnist", "trainer.max_epochs=abc"],
        "`trainer.max_epochs='abc'`: expected an integer",
    ),
    ("train", ["experiment=vae_mnist", "trainer.max_steps=ten"], "`trainer.max_steps='ten'`"),
    ("train", ["experiment=vae_mnist", "trainer.limit_train_batches=1.5"], "fraction of the split"),
    ("train", ["experiment=vae_mnist", "trainer.precision=17"], "`trainer.precision=17`"),
    ("train", ["experiment=vae_mnist", "trainer.fast_dev_run=maybe"], "`trainer.fast_dev_run='maybe'`"),
    (
        "train",
        ["experiment=vae_mnist", "data.batch_size=0"],
        "`data.batch_size=0`: expected a positive integer",
    ),
    ("train", ["experiment=vae_mnist", "data.num_workers=-2"], "`data.num_workers=-2`"),
    ("train", ["experiment=vae_mnist", "data.source=nope"], "data.source='nope'"),
    ("train", ["experiment=vae_mnist", "data.source=local", "data.path={empty}"], "{empty}"),
    ("train", ["experiment=nope"], "`experiment=nope`: no such config"),
    ("train", ["experiment=vae_mnsit"], "Did you mean `vae_mnist`?"),
    ("train", ["experiment=vae_mnist", "model.nope=1"], "`model.nope` is not a key"),
    (
        "train",
        ["experiment=vae_mnist", "+model.nope=1"],
        "`model.nope` is not an argument of lit_modules.vae.VAE",
    ),
    ("train", ["experiment=vae_mnist", "trainer=nope"], "`trainer=nope`: no such config"),
    ("train", ["experiment=ddpm_mnist", "model.prediction_type=foo"], "model.prediction_type='foo'"),
    ("train", ["experiment=ddpm_mnist", "model.sampler=nope"], "unknown sampler 'nope'"),
    ("train", ["experiment=ddpm_mnist", "model.steps=5000"], "steps=5000"),
    (
        "train",
        ["experiment=ddpm_mnist", "trainer.limit_test_batches=1"],
        "model.fid_allow_below_minimum=true",
    ),
    ("train", ["experiment=ddpm_mnist", "model.fid_num_samples=100"], "model.fid_num_samples=100"),
    # train: files
    (
        "train",
        ["experiment=vae_mnist", "ckpt_path=/no/such/file.ckpt"],
        "`ckpt_path=/no/such/file.ckpt`: no such file",
    ),
    ("train", ["experiment=vae_mnist", "ckpt_path={empty}"], "is a folder; expected a .ckpt file"),
    ("train", ["experiment=vae_mnist", "ckpt_path={corrupt}"], "not a readable PyTorch checkpoint"),
    ("train", ["experiment=vae_mnist", "ckpt_path={foreign}"], "not a Lightning checkpoint"),
    ("train", ["experiment=vae_mnist", "ckpt_path={pickle}"], "objects other than tensors"),
    ("train", ["experiment=vae_mnist", "ckpt_path={ddpm}"], "was written by lit_modules.ddpm.DDPM"),
    ("train", ["experiment=vae_mnist", "ckpt_path=last"], "ckpt_path=last"),
    # evaluate
    ("evaluate", ["experiment=vae_mnist"], "ckpt_path is required to evaluate VAE"),
    ("evaluate", ["experiment=ddpm_mnist", "ckpt_path={vae}"], "was written by lit_modules.vae.VAE"),
    ("evaluate", ["experiment=vae_mnist", "ckpt_path={corrupt}"], "not a readable PyTorch checkpoint"),
    ("evaluate", ["experiment=vae_mnist", "ckpt_path={vae}", "trainer.max_epoch=1"], "trainer.max_epochs"),
    # sample
    ("sample", [], "ckpt_path is required"),
    ("sample", ["ckpt_path={vae}"], "is not a checkpoint of a generative model"),
    ("sample", ["ckpt_path={ddpm}", "num_samples=0"], "`num_samples=0`: expected a positive integer"),
    ("sample", ["ckpt_path={ddpm}", "sampler=nope"], "unknown sampler 'nope'"),
    ("sample", ["ckpt_path={ddpm}", "steps=0"], "steps=0"),
    ("sample", ["ckpt_path={ddpm}", "guidance_scale=2"], "guidance_scale=2"),
    (
        "sample",
        ["ckpt_path={ddpm}", "expensive_metrics=true", "num_samples=10"],
        "fid.allow_below_minimum=true",
    ),
    ("sample", ["ckpt_path={ddpm}", "seed=x"], "`seed='x'`"),
    # enhance
    ("enhance", ["input_dir={empty}", "output_dir={tmp}/out", "ckpt_path={vae}"], "{empty}"),
    ("enhance", ["input_dir={images}", "output_dir={tmp}/out", "ckpt_path={vae}"], "{vae}"),
    ("enhance", ["input_dir=/no/such/dir", "output_dir={tmp}/out", "ckpt_path={vae}"], "/no/such/dir"),
    ("enhance", ["input_dir={images}", "output_dir={tmp}/out", "ckpt_path={corrupt}"], "{corrupt}"),
    # prepare
    ("prepare", ["data=lol", "data.source=local", "data.path={empty}"], "{empty}"),
    ("prepare", ["data=nope"], "`data=nope`: no such config"),
    # report
    ("report", ["/no/such/run_dir"], "/no/such/run_dir"),
    ("report", ["{empty}"], "{empty}"),
]


def _fill(text: str, files: dict[str, Path], tmp: Path) -> str:
    return text.format(tmp=tmp, **{k: str(v) for k, v in files.items()})


@pytest.mark.parametrize(
    "command,args,expected",
    CASES,
    ids=[f"{c}:{' '.join(a)[:60]}" for c, a, _ in CASES],
)
def test_bad_input_one_message_exit_2(command, args, expected, files, tmp_path, capfd):
    run = existing_run(tmp_path)
    before = snapshot(run)
    args = [_fill(a, files, tmp_path) for a in args]
    if command != "report":
        args += [f"hydra.run.dir={run}"]
        if command in ("train", "evaluate"):
            args += ["logger=none"]
    code = invoke(command, *args)
    out, err = capfd.readouterr()
    text = out + err
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert _fill(expected, files, tmp_path) in text, text[-3000:]
    assert text.count("error: ") <= 1, text[-3000:]  # one message, not the same one twice
    after = snapshot(run)
    if command == "prepare" and "check.json" in after:  # its report of the problems is its output
        assert json.loads(after.pop("check.json"))["problems"]
    assert after == before  # nothing of the existing run was rewritten, nothing added


def test_debug_flag_raises_the_error_itself(tmp_path):
    """`--debug`: the exception propagates (Python prints its traceback, exit status 1)."""
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        invoke("train", "experiment=vae_mnist", "seed=abc", f"hydra.run.dir={tmp_path}", "--debug")


def test_subprocess_exit_status_and_single_message(tmp_path):
    """The real command line: status 2, the message on stderr, no traceback, a hint for the full trace."""
    proc = run_cli("train", "experiment=vae_mnist", "trainer.max_epoch=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("error: ") == 1 and "trainer.max_epochs" in proc.stderr
    assert "--debug" in proc.stderr and not (tmp_path / "r" / "run_info.json").exists()
