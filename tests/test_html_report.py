"""report.html: one self-contained page per run (eval, attack, transfer, training), checked in a real headless
browser (Debian's chromium): it renders, every image loads, its numbers are report.json's; ``robustlab report``
rebuilds it (and report.md) from the saved files alone; the attack gallery shows what its own images do."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from robustlab.cli import main
from robustlab.eval import (
    AttackConfig,
    DataSource,
    EvalConfig,
    TransferConfig,
    run_attack,
    run_evaluation,
    run_transfer,
)
from robustlab.eval.intervals import format_interval
from robustlab.reports import HTML_FILE, render_html

pytestmark = pytest.mark.usefixtures("one_thread")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser installed (apt-get install chromium): report.html not rendered"
)
DATA = DataSource("fashion-mnist", n=60)
# After the page loads, a script lists the images that did not load; --dump-dom prints the DOM with its answer.
CHECK = """<script>window.addEventListener('load', () => { const images = [...document.images];
const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
const p = document.createElement('pre'); p.id = 'robustlab-check';
p.textContent = JSON.stringify({images: images.length, broken: broken}); document.body.appendChild(p); });</script>"""


def browse(html_path, tmp_path, screenshot=None) -> tuple[dict, str]:
    """Open ``html_path`` in headless chromium: the image check's answer and the rendered DOM; with
    ``screenshot``, also a PNG of the page."""
    page = tmp_path / "page.html"
    page.write_text(html_path.read_text().replace("</body>", CHECK + "</body>"))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    run = lambda *args: subprocess.run([BROWSER, *flags, *args], capture_output=True, text=True, timeout=120)  # noqa: E731
    dom = run("--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout
    found = re.findall(r'<pre id="robustlab-check">(.*?)</pre>', dom)
    assert found, f"the page did not finish loading in the browser: {dom[:300]}"
    if screenshot is not None:
        run("--window-size=1100,1500", "--hide-scrollbars", f"--screenshot={screenshot}", html_path.as_uri())
        assert screenshot.read_bytes()[:4] == b"\x89PNG"
    return json.loads(found[0]), dom


def assert_self_contained(html: str) -> None:
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script" not in html


def assert_not_blank(png) -> None:
    from PIL import Image

    with Image.open(png) as image:
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # text, tables and plots drawn


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "eval"
    config = EvalConfig(eps=(0.05, 0.1), attacks="pgd", steps=3, sanity_n=20, batch_size=60)
    report = run_evaluation("zoo:fmnist-cnn", DATA, config, out, command_line="robustlab eval (test)")
    return out, report


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "attack"
    report = run_attack("zoo:fmnist-cnn", DATA, AttackConfig("pgd", 0.1, steps=3, batch_size=60), out)
    return out, report


@needs_browser
def test_eval_report_renders_in_a_browser_with_every_image_and_its_numbers(eval_run, tmp_path):
    out, report = eval_run
    html = (out / HTML_FILE).read_text()
    assert_self_contained(html)
    check, dom = browse(out / HTML_FILE, tmp_path, screenshot=tmp_path / "eval.png")
    assert check["broken"] == [] and check["images"] == html.count("<img") >= 3  # the eval plots
    last = max(report.results, key=lambda e: e.eps)
    assert format_interval(last.robust_accuracy, last.intervals["robust_accuracy"]) in dom  # with its interval
    assert ("checks passed" in dom) != ("found a warning sign" in dom)  # the sanity flags in plain words
    assert "robustlab eval (test)" in dom and "Configuration" in dom
    assert_not_blank(tmp_path / "eval.png")


@needs_browser
def test_training_report_renders_in_a_browser(tmp_path):
    out = tmp_path / "train"
    args = ["train", "--method", "fgsm-rs", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1"]
    args += ["--epochs", "1", "--n", "256", "--eval-n", "32", "--monitor-n", "32", "--out", out, "--no-progress"]
    assert main([str(a) for a in args]) == 0
    data = json.loads((out / "report.json").read_text())
    html = (out / HTML_FILE).read_text()
    assert_self_contained(html)
    check, dom = browse(out / HTML_FILE, tmp_path, screenshot=tmp_path / "train.png")
    assert check["broken"] == [] and check["images"] == 1  # curves.png
    assert f"{100 * data['evaluation']['pgd_accuracy']:.2f} %" in dom and "History" in dom
    assert_not_blank(tmp_path / "train.png")


@needs_browser
def test_attack_gallery_renders_and_each_tile_tells_what_its_image_does(attack_run, tmp_path):
    out, report = attack_run
    gallery = torch.load(out / "gallery.pt", weights_only=True)
    labels, broken = gallery["label"], gallery["success"]
    assert torch.equal(broken, gallery["pred_adv"] != labels) and torch.equal(~broken, gallery["icr"] == 1)
    assert torch.equal(gallery["pred_clean"], labels)  # only samples the model got right are shown
    for c in labels.unique():
        assert (broken[labels == c]).sum() <= 2 and (~broken[labels == c]).sum() <= 2
    shift = (gallery["x_adv"].int() - gallery["x"].int()).abs().max()
    assert shift <= round(0.1 * 255) + 1  # the adversarial images stay in the eps-ball
    check, dom = browse(out / HTML_FILE, tmp_path, screenshot=tmp_path / "attack.png")
    assert check["broken"] == [] and check["images"] == 3 * len(labels)
    assert dom.count('class="tile broken"') == int(broken.sum()) and "ICR" in dom
    assert format_interval(report.robust_accuracy, report.intervals["robust_accuracy"], 2) in dom
    assert_not_blank(tmp_path / "attack.png")


def test_robustlab_report_rebuilds_html_and_markdown_without_recomputing(eval_run, attack_run, tmp_path, capsys):
    transfer = tmp_path / "transfer"
    run_transfer(["zoo:fmnist-cnn"], ["zoo:fmnist-mlp"], DATA, TransferConfig(0.1, attacks="fgsm"), transfer)
    for out in (eval_run[0], attack_run[0], transfer):
        before = {name: (out / name).read_bytes() for name in ("report.md", HTML_FILE)}
        assert_self_contained(before[HTML_FILE].decode())
        for name in before:
            (out / name).unlink() if name == HTML_FILE else (out / name).write_text("stale")
        assert main(["report", str(out)]) == 0
        assert "html:" in capsys.readouterr().out
        assert (out / HTML_FILE).read_bytes() == render_html(out).encode()
        if out != transfer:  # transfer keeps its saved Markdown (it needs the per-sample tensors)
            assert (out / "report.md").read_bytes() == before["report.md"]
            assert (out / HTML_FILE).read_bytes() == before[HTML_FILE]


def test_report_of_a_folder_without_a_run_is_one_line(tmp_path, cli_error):
    cli_error(["report", tmp_path / "absent"], "not a folder")
    cli_error(["report", tmp_path], "report.json", "finished run")
    (tmp_path / "report.json").write_text('{"something": "else"}')
    cli_error(["report", tmp_path], "not a robustlab report")
