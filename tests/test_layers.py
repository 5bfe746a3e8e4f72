"""The package's stages import only downward (the import-linter contract in pyproject.toml)."""

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_no_module_imports_a_stage_above_its_own():
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0, \
        "an upward import between stages (see the report above)"
