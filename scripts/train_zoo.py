"""Train the embedded zoo's standard (non-robust) models and record their metadata.

Rerun: ``python scripts/train_zoo.py [NAME ...]`` (writes robustlab/models/zoo/NAME.pt and zoo.json; ``--out DIR``
writes them elsewhere). The models train through the library's loop (:func:`robustlab.training.train`, standard
training) with locally seeded weights and data order: the global RNG is never reseeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustlab.data import load_dataset
from robustlab.defenses import make_method
from robustlab.io import atomic_torch_save, atomic_write_bytes
from robustlab.models import load_model
from robustlab.models.loader import ZOO_DIR
from robustlab.training import TrainConfig, train

RECIPES = {
    "fmnist-cnn": {"arch": "cnn", "seed": 0, "epochs": 5},
    "fmnist-cnn-s1": {"arch": "cnn", "seed": 1, "epochs": 5},
    "fmnist-mlp": {"arch": "mlp", "seed": 0, "epochs": 8},
}


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy on uint8 images, in batches of 1000."""
    model.eval()
    correct = sum((model(images[i : i + 1000].float() / 255).argmax(1) == labels[i : i + 1000]).sum().item()
                  for i in range(0, len(labels), 1000))  # fmt: skip
    return correct / len(labels)


def train_one(name: str, out_dir: Path) -> dict:
    """One zoo model: Adam, cyclic (one-cycle) learning rate peaking at 2e-3, batch 128, through the library loop."""
    recipe = RECIPES[name]
    model = load_model(recipe["arch"], dataset="fashion-mnist", seed=recipe["seed"])  # seeded locally
    train_set, test_set = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    config = TrainConfig(epochs=recipe["epochs"], batch_size=128, optimizer="adam", lr=2e-3, lr_schedule="cyclic",
                         weight_decay=0.0, seed=recipe["seed"])  # fmt: skip
    start = time.time()
    train(model, make_method("standard"), train_set, config)
    ckpt = out_dir / f"{name}.pt"
    atomic_torch_save(model.state_dict(), ckpt)
    return {
        "arch": recipe["arch"],
        "dataset": "fashion-mnist",
        "checkpoint": ckpt.name,
        "training": "standard (Adam, cyclic lr 2e-3, batch 128; robustlab.training.train)",
        "epochs": recipe["epochs"],
        "seed": recipe["seed"],
        "test_accuracy": round(accuracy(model, test_set.images, test_set.labels), 4),
        "train_time_s": round(time.time() - start, 1),
        "command": f"python scripts/train_zoo.py {name}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(RECIPES), help=f"models to train ({', '.join(RECIPES)})")
    parser.add_argument("--out", default=str(ZOO_DIR), help="folder of the checkpoints and zoo.json (default: the zoo)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "zoo.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in args.names:
        index[name] = train_one(name, out_dir)
        print(name, index[name], file=sys.stderr)
        atomic_write_bytes(index_path, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
