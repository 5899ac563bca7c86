"""The tree stays as clean as it is today, under the rules written in pyproject.toml's [tool.ruff]:

- `ruff check`: pyflakes (undefined names, unused imports and variables, names redefined by accident),
  pycodestyle errors and warnings (lines of at most 120 columns), import order and bugbear's likely bugs;
- `ruff format --check`: every Python file is exactly as the formatter writes it (Markdown is left out,
  see [tool.ruff.format]), so a diff shows only what changed, never a reformatting;
- `clang-format --dry-run --Werror`: every C++ file under cpp/ is as clang-format writes it under the
  root's .clang-format.

All run on the whole tree, with the versions the test extra pins. To fix a failure: `ruff format .`,
`ruff check --fix .` and `clang-format -i` on the C++ files, then by hand what is left (a long line is
rewrapped, not silenced)."""

import pathlib
import shutil
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


def clang_format_binary():
    """The clang-format the test extra installs (the PyPI wheel puts it beside this interpreter), else the
    one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "clang-format"
    found = str(beside) if beside.is_file() else shutil.which("clang-format")
    assert found, "clang-format is missing: it comes with the test extra (pip install '.[test]')"
    return found


def test_the_cpp_tree_is_formatted_by_clang_format():
    sources = sorted(p for p in (ROOT / "cpp").rglob("*") if p.suffix in (".cpp", ".h", ".inl"))
    assert len(sources) > 30, sources  # the glob found the tree
    binary = clang_format_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    result = subprocess.run([binary, "--dry-run", "--Werror", *map(str, sources)], capture_output=True, text=True)
    assert result.returncode == 0, f"{version}:\n{result.stderr[-4000:]}"
