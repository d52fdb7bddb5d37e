"""The README's Python API example runs as written (keeps the docs true)."""

import re
from pathlib import Path


def test_readme_api_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S)
    assert example, "README lost its Python API example"
    namespace: dict = {}
    exec(compile(example.group(1), "README.md", "exec"), namespace)
    report = namespace["report"]
    assert 0 <= report.robust_accuracy < report.clean_accuracy
