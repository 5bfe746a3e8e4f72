"""The package's stages import only downward (the import-linter contract in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_no_module_imports_a_stage_above_its_own():
    # in a process of its own: import-linter's command line reconfigures logging, which would silence the
    # toolkit's loggers for the rest of the test session
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(PYPROJECT), "--no-cache"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"an upward import between stages:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    assert "Contracts: 1 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]
