"""The shape issue 24 asks for stays true: no import cycles (lazy imports included), a CLI of at most 900 lines, no
module over 350 lines, a README of at most 350 lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "robustlab"


def _cycles_script():
    """``scripts/cycles.py`` as a module (scripts/ is not a package): the one definition of an import cycle."""
    spec = importlib.util.spec_from_file_location("cycles", ROOT / "scripts" / "cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_the_cycle_finder_sees_a_lazy_import(tmp_path):
    """A cycle closed only by an import inside a function counts, between modules and between packages."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def late():\n    from .. import a\n")
    module_cycles, package_cycles = _cycles_script().cycles(package)
    assert module_cycles == [["pkg.a", "pkg.sub.b"]]
    assert package_cycles == [["pkg.a", "pkg.sub"]]


def test_no_import_cycles():
    module_cycles, package_cycles = _cycles_script().cycles(PACKAGE)
    assert module_cycles == [], "modules that import each other (python3 scripts/cycles.py)"
    assert package_cycles == [], "packages that import each other (python3 scripts/cycles.py)"


def test_the_cli_is_at_most_900_lines():
    assert sum(lines(path) for path in (PACKAGE / "cli").rglob("*.py")) <= 900


def test_no_module_over_350_lines():
    over = {path.relative_to(ROOT).as_posix(): lines(path) for path in PACKAGE.rglob("*.py") if lines(path) > 350}
    assert over == {}, "split these modules by idea (a pure move of a coherent group of functions)"


def test_the_readme_is_at_most_350_lines():
    assert lines(ROOT / "README.md") <= 350, "the README is a user's guide: long recipes and findings go to docs/"
