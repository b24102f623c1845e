"""Time one `dissect` command in a child process: wall seconds and the child's own peak resident memory.

Shared by the benchmarks that compare whole commands (bench_simulate, bench_explain). The child
records its ru_maxrss at exit, so the peak is that command's alone, not the maximum over every
child the benchmark started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import atexit, os, resource, runpy, sys
atexit.register(lambda: open(os.environ["BENCH_PEAK"], "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
sys.argv = ["dissect", *sys.argv[1:]]
runpy.run_module("dissect.cli.main", run_name="__main__")
"""


def timed(args: list[str]) -> tuple[float, float]:
    """(seconds, peak resident GB) of `dissect ARGS...`; exits with its last error line when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                           env=dict(os.environ, BENCH_PEAK=peak.name))
        dt = time.perf_counter() - t
        if r.returncode != 0:
            tail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else str(r.returncode)
            sys.exit(f"{' '.join(args[:2])} failed: {tail}")
        kb = int(Path(peak.name).read_text() or 0)
    return dt, kb / 2**20
