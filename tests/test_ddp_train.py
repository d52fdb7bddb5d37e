"""``torchrun --nproc_per_node=2``: DDP training on CPU (gloo) trains, and the ranks' weights agree."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from robustlab.data import first_n, load_dataset
    from robustlab.training import TrainConfig, train
    from robustlab.distributed import init_distributed
    from robustlab.defenses.methods import make_method
    from robustlab.defenses.monitor import COMonitor
    from robustlab.models import build_model
    from robustlab.threat import ThreatModel

    out = sys.argv[1]
    rank, world = init_distributed(torch.device("cpu")).as_tuple()
    threat = ThreatModel("linf", 0.1)
    ds = load_dataset("fashion-mnist", "train")
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = build_model("cnn")
    monitor = COMonitor(ds.images[-32:].float() / 255, ds.labels[-32:], threat, every_steps=1, on_co="continue")
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, best_metric="monitor_pgd_acc")
    result = train(model, make_method("noiseaug", threat), first_n(ds, 256), config, out, callbacks=[monitor])
    torch.save({"state": model.state_dict(), "world": world, "epochs": result.epochs_done}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
    """
)


def test_two_rank_torchrun_trains_and_ranks_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["world"] == 2 and rank0["epochs"] == rank1["epochs"] == 2
    for name, w in rank0["state"].items():
        assert torch.equal(w, rank1["state"][name]), name
    # it trained: rank 0 wrote checkpoints whose history has each rank's 4 steps per epoch (256 / 2 / 32)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert [h["steps"] for h in last["history"]] == [4, 4]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        from robustlab.models import build_model

        init = build_model("cnn").state_dict()
    assert not torch.equal(init["model.fc.weight"], rank0["state"]["model.fc.weight"])
