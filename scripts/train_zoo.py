"""Train the embedded zoo's standard (non-robust) models and record their metadata.

Rerun: ``python scripts/train_zoo.py [NAME ...]`` (writes robustlab/models/zoo/NAME.pt and zoo.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from robustlab.data import load_dataset
from robustlab.models.loader import ZOO_DIR, build_model

RECIPES = {
    "fmnist-cnn": {"arch": "cnn", "seed": 0, "epochs": 5},
    "fmnist-cnn-s1": {"arch": "cnn", "seed": 1, "epochs": 5},
    "fmnist-mlp": {"arch": "mlp", "seed": 0, "epochs": 8},
}


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def train(name: str) -> dict:
    recipe = RECIPES[name]
    generator = torch.Generator().manual_seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])  # weight init of this standalone script only
    model = build_model(recipe["arch"], "fashion-mnist")
    train_set, test_set = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    loader = DataLoader(train_set, batch_size=128, shuffle=True, generator=generator)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=recipe["epochs"] * len(loader))
    start = time.time()
    for _ in range(recipe["epochs"]):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    test_acc = accuracy(model, DataLoader(test_set, batch_size=1000))
    ckpt = ZOO_DIR / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    return {
        "arch": recipe["arch"],
        "dataset": "fashion-mnist",
        "checkpoint": ckpt.name,
        "training": "standard (Adam, one-cycle lr 2e-3, batch 128)",
        "epochs": recipe["epochs"],
        "seed": recipe["seed"],
        "test_accuracy": round(test_acc, 4),
        "train_time_s": round(time.time() - start, 1),
        "command": f"python scripts/train_zoo.py {name}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RECIPES), help=f"models to train ({', '.join(RECIPES)})")
    args = parser.parse_args(argv)
    index_path = ZOO_DIR / "zoo.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in args.names:
        index[name] = train(name)
        print(name, index[name], file=sys.stderr)
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
