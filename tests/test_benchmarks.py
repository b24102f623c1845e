"""The benchmarks' smoke modes, so that they cannot rot (the real runs are manual: docs/PERFORMANCE.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")))
def test_benchmark_smoke_mode_runs(script):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "speed-up" in proc.stdout or "ratio" in proc.stdout, proc.stdout
    assert "failed" not in proc.stdout, proc.stdout
