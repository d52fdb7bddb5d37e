"""``robustlab --version`` and ``robustlab zoo``: what a newcomer asks first."""

from __future__ import annotations

import json

import pytest

from robustlab import __version__
from robustlab.cli import main
from robustlab.models import zoo_index


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out


def test_zoo_lists_every_model_with_its_recorded_figures(capsys):
    assert main(["zoo"]) == 0
    table = capsys.readouterr().out
    for name, meta in zoo_index().items():
        row = next(line for line in table.splitlines() if f"zoo:{name} " in line)
        assert f"{100 * meta['test_accuracy']:.1f} %" in row and meta["arch"] in row
        robust = meta.get("robust_accuracy") or meta.get("robustness") or {}
        value = robust.get("value", robust.get("autoattack_accuracy"))
        assert (f"{100 * value:.1f} %" if value is not None else "| -  ") in row
    assert main(["zoo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == zoo_index()
