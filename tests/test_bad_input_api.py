"""The Python API's bad inputs: one :class:`RobustlabError` line naming the problem and the fix (numpy arrays are
accepted, float64 images converted), and the evaluator gives a train-mode model back as it found it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import attack_from_spec
from robustlab.errors import RobustlabError
from robustlab.eval import Evaluator
from robustlab.eval.sanity import run_sanity_checks
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")
THREAT = ThreatModel("linf", 0.1)


def _evaluator(**options) -> Evaluator:
    return Evaluator({"fgsm": attack_from_spec("fgsm")}, THREAT, **options)


def _bn_model() -> nn.Module:
    """A small CNN with BatchNorm, in train mode (running statistics would move with every forward pass)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    return net.train()


# --- item 7: BatchNorm buffers left as found ----------------------------------------------------------------


def test_the_evaluator_leaves_a_train_mode_models_batchnorm_buffers_as_found(fmnist_batch):
    x, y = fmnist_batch(16)
    net = _bn_model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for options in ({}, {"predictions": 3}):  # the clean pass, the attacks' judging and repeated prediction passes
        _evaluator(**options).run(net, (x, y))
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), options  # running_mean/var, num_batches
    assert net.training and all(m.training for m in net.modules())  # its mode, too


def test_the_sanity_checks_leave_batchnorm_buffers_as_found(fmnist_batch):
    x, y = fmnist_batch(8)
    net = _bn_model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run_sanity_checks(net, x, y, THREAT, steps=2, queries=20)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --- the Python API's bad inputs ----------------------------------------------------------------------------


def test_numpy_arrays_are_accepted_and_float64_images_converted(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)
    expected = _evaluator().run(zoo_cnn, (x, y)).clean_accuracy
    assert _evaluator().run(zoo_cnn, (x.numpy(), y.numpy())).clean_accuracy == expected
    assert _evaluator().run(zoo_cnn, (x.double(), y)).clean_accuracy == expected


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("lists", ["x is a list", "torch.as_tensor"]),
        ("float labels", ["integer class indices", "y.long()"]),
        ("3 labels", ["16 inputs", "3 labels"]),
        ("empty", ["nothing to evaluate"]),
        ("not a pair", ["torch Dataset or an (x, y) pair"]),
    ],
)
def test_bad_data_is_one_line(case, words, zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)
    data = {"lists": (x.tolist(), y.tolist()), "float labels": (x, y.float()), "3 labels": (x, y[:3]),
            "empty": (x[:0], y[:0]), "not a pair": x}[case]  # fmt: skip
    with pytest.raises(RobustlabError) as info:
        _evaluator().run(zoo_cnn, data)
    assert len(str(info.value).splitlines()) == 1 and all(w in str(info.value) for w in words), info.value


def test_an_empty_batch_is_refused(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(4)
    with pytest.raises(RobustlabError, match="batch is empty"):
        _evaluator().run_batch(zoo_cnn, x[:0], y[:0])


@pytest.mark.parametrize(("options", "words"), [({"batch_size": 0}, "batch_size 0"), ({"batch_size": -3}, "batch_size"),
                                                ({"device": "tpu"}, "unknown device")])  # fmt: skip
def test_bad_evaluator_options_are_one_line(options, words):
    with pytest.raises(RobustlabError, match=words):
        _evaluator(**options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(RobustlabError, match="no CUDA GPU is visible; use device='cpu'"):
        _evaluator(device="cuda")


# --- item 8: a kNN monitor larger than the data is refused, so what is recorded is what was used --------------


def test_knn_n_beyond_the_train_split_is_refused(tmp_path, cli_error):
    from robustlab.data import first_n, load_dataset
    from robustlab.ssl.knn import KNNMonitor

    small = first_n(load_dataset("fashion-mnist", "test"), 50)
    monitor = KNNMonitor.from_datasets(small, small, 50)
    assert len(monitor.train[1]) == 50 and len(monitor.test[1]) == 50  # 100 test items asked, 50 there: all
    with pytest.raises(RobustlabError, match="--knn-n 51 is more than the 50 labelled train items"):
        KNNMonitor.from_datasets(small, small, 51)
    cli_error(["ssl", "--model", "cnn", "--dataset", "fashion-mnist", "--n", "64", "--epochs", "1", "--knn-n",
               "100000", "--no-progress", "--out", tmp_path / "ssl"], "--knn-n 100000", "60000")  # fmt: skip
