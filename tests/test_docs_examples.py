"""Every ```python block in README.md and docs/*.md runs (blocks of one file share a namespace, in order)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("path", [p for p in FILES if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_python_examples_run(path, capsys):
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(BLOCK.findall(path.read_text())):
        exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)  # noqa: S102 - our own docs
