"""``torchrun --nproc_per_node=2 -m robustlab eval`` (gloo, CPU) reports exactly what one process reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

# torchrun gives each worker one thread; the single process gets one too, so floats compare bitwise.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = [
    "eval", "--model", "zoo:fmnist-mlp", "--dataset", "fashion-mnist", "--n", "70", "--batch-size", "16",
    "--eps", "0.03,0.06", "--attacks", "fgsm,pgd(steps=5)", "--sanity-n", "0", "--no-plots", "--no-progress",
]  # fmt: skip


def test_two_ranks_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, "-m", "robustlab", *ARGS, "--out", str(one)]
    subprocess.run(single, env=ENV, check=True, capture_output=True, timeout=300)
    done = subprocess.run(
        # "--" keeps torchrun's own parser off robustlab's options (it would read --n as an abbreviation)
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "robustlab", "--", *ARGS, "--out", str(two)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("robust %") == 1  # only rank 0 prints and writes

    reports = [json.loads((d / "report.json").read_text()) for d in (one, two)]
    assert (reports[0]["world_size"], reports[1]["world_size"]) == (1, 2)
    for a, b in zip(reports[0]["results"], reports[1]["results"]):
        for key in ("eps", "n", "clean_accuracy", "robust_accuracy", "worst_case_topk"):
            assert a[key] == b[key], key
        for name in a["attacks"]:
            assert a["attacks"][name]["topk"] == b["attacks"][name]["topk"]
    # the finished run keeps no per-batch cache; the per-sample results of both runs match
    assert not (two / "partial").exists() and json.loads((two / "run.json").read_text())["files"]["results.pt"]
    saved = [torch.load(d / "results.pt", weights_only=True)["results"] for d in (one, two)]
    for a, b in zip(*saved):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["clean_logits"], b["clean_logits"])
        for name in a["broken"]:
            assert torch.equal(a["broken"][name], b["broken"][name])
            assert torch.equal(a["adv_logits"][name], b["adv_logits"][name])
