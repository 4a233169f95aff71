"""`python -m experiments.fid_features export <classifier ckpt>` | `... check`: the FID feature network's weights.

`export` takes a checkpoint of `experiment=mnist_classifier`, measures its accuracy on the test split of the
data it was trained on (rebuilt from the checkpoint's own record), and writes `lit_modules/weights/
mnist_classifier.pt` (the network's state_dict) and `mnist_classifier.json` (sha256, test accuracy, the data,
the checkpoint and the commit that trained it). `check` verifies the committed file against its record.
Exporting new weights changes the hash, and FIDs computed before are then not comparable with later ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from lit_modules.fid import FEATURE_RECORD, FEATURE_WEIGHTS, load_feature_network, sha256_file
from runtime.checkpoints import load_checkpoint, model_from_checkpoint


@torch.no_grad()
def export(
    ckpt_path: Path, weights: Path = FEATURE_WEIGHTS, record: Path = FEATURE_RECORD, note: str | None = None
) -> dict:
    from lit_modules.classifier import MNISTClassifier

    model, suite = model_from_checkpoint(
        ckpt_path,
        accept=lambda cls: isinstance(cls, type) and issubclass(cls, MNISTClassifier),
        expected="lit_modules.classifier.MNISTClassifier (train one with "
        "`python -m experiments.train experiment=mnist_classifier`)",
    )
    ckpt = load_checkpoint(ckpt_path)  # epoch and step for the record
    net = model.net.eval()
    datamodule = hydra.utils.instantiate(OmegaConf.create(suite["data_config"]))
    datamodule.setup("test")
    correct = total = 0
    for x, y in datamodule.test_dataloader():
        correct += int((net(x).argmax(1) == y).sum())
        total += len(y)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, weights)
    run_info_path = Path(ckpt_path).resolve().parents[1] / "run_info.json"
    run_info = json.loads(run_info_path.read_text()) if run_info_path.is_file() else {}
    data = datamodule.describe()
    body = {
        "name": "lit_modules.nets.classifier.MNISTConvNet",
        "sha256": sha256_file(weights),
        "feature_dim": net.feature_dim,
        "dropout": float(net.head[0].p),
        "parameters": sum(p.numel() for p in net.parameters()),
        "test_accuracy": correct / total,
        "num_test": total,
        "trained_on": {
            "split": "train (validation split for checkpoint selection; test split only for this accuracy)",
            "dataset": data.get("label"),
            "source": data.get("source"),
            "split_seed": data.get("split_seed"),
            "n_train": data.get("n_train"),
        },
        "checkpoint": {
            "file": Path(ckpt_path).name,
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "experiment": suite.get("experiment"),
        },
        "trained_by": {
            "command": run_info.get("command"),
            "git_commit": (run_info.get("git") or {}).get("commit"),
            "git_dirty": (run_info.get("git") or {}).get("dirty"),
            "packages": {
                k: v
                for k, v in (run_info.get("packages") or {}).items()
                if k in ("torch", "pytorch-lightning")
            },
        },
    }
    if note:
        body["note"] = note
    record.write_text(json.dumps(body, indent=2) + "\n")
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.fid_features", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "export", help="write lit_modules/weights/mnist_classifier.{pt,json} from a classifier checkpoint"
    )
    p.add_argument("ckpt_path", type=Path)
    p.add_argument("--note", default=None, help="a free-text note stored in the record (how the run went)")
    sub.add_parser("check", help="verify the committed weights against their recorded sha256")
    args = parser.parse_args(argv)
    if args.command == "export":
        body = export(args.ckpt_path, note=args.note)
        print(
            json.dumps({k: body[k] for k in ("sha256", "test_accuracy", "num_test", "feature_dim")}, indent=2)
        )
    else:
        _, record = load_feature_network()
        print(f"OK: {FEATURE_WEIGHTS} sha256 {record['sha256']}, test accuracy {record['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
