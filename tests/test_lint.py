"""The tree passes ruff's pyflakes rules (F) and syntax checks (E9): no undefined names, no unused imports or
variables, no names redefined by accident. These catch mistakes, not style; the wider style rules in
pyproject.toml's [tool.ruff] are there for editors and `ruff check`."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_tree_has_no_pyflakes_findings():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,E9", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
