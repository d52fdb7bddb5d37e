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


def test_a_dataset_that_does_not_subclass_torch_dataset_is_still_a_dataset(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)

    class Pairs:  # len and getitem, as DataLoader needs
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int):
            return x[i], int(y[i])

    assert _evaluator().run(zoo_cnn, Pairs()).clean_accuracy == _evaluator().run(zoo_cnn, (x, y)).clean_accuracy


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


def test_run_evaluation_takes_numpy_and_refuses_lists_too(fmnist_batch):
    from robustlab.eval import EvalConfig, run_evaluation

    x, y = fmnist_batch(8)
    config = EvalConfig(eps=0.1, attacks="fgsm", sanity_n=0, plots=False)
    expected = run_evaluation("zoo:fmnist-cnn", (x, y), config).results[0].clean_accuracy
    assert run_evaluation("zoo:fmnist-cnn", (x.numpy(), y.numpy()), config).results[0].clean_accuracy == expected
    with pytest.raises(RobustlabError, match="y is a list"):
        run_evaluation("zoo:fmnist-cnn", (x, y.tolist()), config)


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
    from robustlab.eval import DataSource, EvalConfig, run_evaluation

    with pytest.raises(RobustlabError, match="no CUDA GPU is visible; use device='cpu'"):
        _evaluator(device="cuda")
    with pytest.raises(RobustlabError, match="no CUDA GPU is visible; use device='cpu'"):
        run_evaluation("zoo:fmnist-cnn", DataSource("fashion-mnist", n=4), EvalConfig(eps=0.1), device="cuda")


# --- item 8: a kNN monitor larger than the data is refused, so what is recorded is what was used --------------


def test_knn_n_beyond_the_train_split_is_refused(tmp_path, cli_error):
    from robustlab.data import first_n, load_dataset
    from robustlab.models import load_model
    from robustlab.ssl.knn import KNNMonitor

    small = first_n(load_dataset("fashion-mnist", "test"), 50)
    monitor = KNNMonitor.from_datasets(small, small, 50)
    assert len(monitor.train[1]) == 50 and len(monitor.test[1]) == 50  # 100 test items asked, 50 there: all
    assert 0 <= monitor.measure(load_model("zoo:fmnist-cnn")) <= 1  # still the training loop's epoch callback
    with pytest.raises(RobustlabError, match="--knn-n 51 is more than the 50 labelled train items"):
        KNNMonitor.from_datasets(small, small, 51)
    cli_error(["ssl", "--model", "cnn", "--dataset", "fashion-mnist", "--n", "64", "--epochs", "1", "--knn-n",
               "100000", "--no-progress", "--out", tmp_path / "ssl"], "--knn-n 100000", "60000")  # fmt: skip


# --- report, compare and zoo on damaged files: one line, exit 2 ---------------------------------------------


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A finished (small) evaluation run folder."""
    from robustlab.eval import DataSource, EvalConfig, run_evaluation

    out = tmp_path_factory.mktemp("runs") / "ev"
    config = EvalConfig(eps=0.1, attacks="fgsm", sanity_n=0, plots=False)
    run_evaluation("zoo:fmnist-cnn", DataSource("fashion-mnist", n=16), config, out)
    return out


def _damaged(eval_run, tmp_path, name: str, change) -> str:
    import json
    import shutil

    folder = tmp_path / name
    shutil.copytree(eval_run, folder)
    data = json.loads((folder / "report.json").read_text())
    (folder / "report.json").write_text(json.dumps(change(data)))
    return str(folder)


def _set_first_result(field: str, value):
    def change(data):
        data["results"][0][field] = value
        return data

    return change


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: 5, ["holds int 5", "not a robustlab report"]),
        (lambda d: None, ["holds null"]),
        (lambda d: {**d, "threat": "linf"}, ["incomplete or damaged"]),
    ],
)
def test_report_on_a_damaged_report_json_is_one_line(change, words, eval_run, tmp_path, cli_error):
    cli_error(["report", _damaged(eval_run, tmp_path, "run", change)], *words)


def test_report_into_a_folder_it_cannot_write_is_one_line(eval_run, tmp_path, cli_error, monkeypatch):
    import robustlab.reports.rebuild as rebuild

    folder = _damaged(eval_run, tmp_path, "run", lambda d: d)
    monkeypatch.setattr(rebuild.os, "access", lambda path, mode: False)  # read-only (root writes anyway)
    cli_error(["report", folder], "cannot write into", "read-only")
    monkeypatch.undo()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rebuild, "atomic_write_bytes", denied)
    cli_error(["report", folder], "cannot write into", "Permission denied")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: None, ["holds null"]),
        (_set_first_result("eps", "abc"), ["malformed field"]),
        (_set_first_result("clean_accuracy", "0.9"), ["clean accuracy as '0.9'", "not a number"]),
    ],
)
def test_compare_on_a_damaged_report_json_is_one_line(change, words, eval_run, tmp_path, cli_error):
    line = cli_error(["compare", _damaged(eval_run, tmp_path, "bad", change), eval_run], *words)
    assert "bad/report.json" in line  # which run is damaged


def test_compare_out_that_cannot_be_a_folder_is_one_line(eval_run, tmp_path, cli_error, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    cli_error(["compare", eval_run, eval_run, "--out", tmp_path / "a_file"], "is a file")
    cli_error(["compare", eval_run, eval_run, "--out", tmp_path / "a_file" / "sub"], "lies under the file")
    import robustlab.reports.compare as compare

    monkeypatch.setattr(compare.os, "access", lambda path, mode: False)
    cli_error(["compare", eval_run, eval_run, "--out", tmp_path / "new"], "not writable")


@pytest.fixture
def zoo_dir(tmp_path, monkeypatch):
    """An empty folder as the zoo (``zoo.json`` written by the test); the zoo index is re-read before and after."""
    import robustlab.models.loader as loader

    monkeypatch.setattr(loader, "ZOO_DIR", tmp_path)
    loader.zoo_index.cache_clear()
    yield tmp_path
    loader.zoo_index.cache_clear()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"fmnist-cnn": {"arch": "cnn"', ["zoo.json is damaged"]),
        ('{"fmnist-cnn": {"arch": "cnn", "dataset": "fashion-mnist"}}', ["'fmnist-cnn' lacks the field 'checkpoint'"]),
        ('["fmnist-cnn"]', ["holds list"]),
    ],
)
def test_a_damaged_zoo_json_is_one_line_naming_the_file_and_field(text, words, zoo_dir, cli_error):
    (zoo_dir / "zoo.json").write_text(text)
    cli_error(["zoo"], "zoo.json", *words)
    cli_error(["eval", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "4", "--eps", "0.1",
               "--attacks", "fgsm", "--sanity-n", "0"], "zoo.json", *words)  # fmt: skip


def test_zoo_lists_an_entry_without_figures(zoo_dir, capsys):
    import json

    from robustlab.cli import main

    (zoo_dir / "zoo.json").write_text(json.dumps({"mine": {"arch": "cnn", "checkpoint": "m.pt", "dataset": "mnist",
                                                           "robust_accuracy": {"value": 0.5}}}))  # fmt: skip
    assert main(["zoo"]) == 0
    assert "| zoo:mine | cnn  | mnist   | -     | -" in capsys.readouterr().out
