"""A non-editable `pip install .` must still find the CUDA sources (shipped as mishbench/csrc)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_csrc(tmp_path):
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          str(REPO)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    shipped = sorted(p.name for p in (target / "mishbench" / "csrc").iterdir())
    repo = sorted(p.name for p in (REPO / "csrc").iterdir() if p.suffix in (".cpp", ".cu", ".cuh", ".h"))
    assert shipped == repo
    probe = subprocess.run([sys.executable, "-c", "import mishbench.op.build as b; print(b.csrc_dir())"],
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert probe.stdout.strip() == str(target / "mishbench" / "csrc"), probe.stderr[-2000:]
