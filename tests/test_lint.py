"""The tree stays as clean as it is today, under the rules written in pyproject.toml's [tool.ruff]:

- `ruff check`: pyflakes (undefined names, unused imports and variables, names redefined by accident),
  pycodestyle errors and warnings (lines of at most 120 columns), import order and bugbear's likely bugs;
- `ruff format --check`: every Python file is exactly as the formatter writes it (Markdown is left out,
  see [tool.ruff.format]), so a diff shows only what changed, never a reformatting.

Both run on the whole tree. To fix a failure: `ruff format .` and `ruff check --fix .`, then by hand what
is left (a long line is rewrapped, not silenced)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", str(ROOT)], capture_output=True, text=True
    )


def test_the_tree_passes_ruff_check_with_the_configured_rules():
    result = ruff("check")  # the rules are pyproject.toml's select: E, F, W, I, B
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tree_is_formatted_by_ruff_format():
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
