"""The repository stays ruff clean and type checks with mypy (configuration in pyproject.toml and setup.cfg)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*command: str) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"`{' '.join(command)}` failed:\n{result.stdout}\n{result.stderr}"


def test_ruff_lint_and_format() -> None:
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[tests]')")
    _run("ruff", "check", ".")
    _run("ruff", "format", "--check", ".")


def test_mypy_package() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[tests]')")
    _run("mypy", "--no-error-summary")
