"""A plain `pip install clip-dissect` (runtime dependencies only) runs demo, show, info and report.

pandas (and the other test extras) are blocked in the subprocesses here, as they are absent from a
plain install; .ci/run also builds a venv with `pip install .` alone and runs these commands in it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: Imported in a test venv but not a dependency of clip-dissect: a plain install lacks them.
EXTRAS = ("pandas", "duckdb", "hypothesis", "scipy", "sentence_transformers", "websocket", "sklearn", "transformers")

def _blocked(tmp_path):
    """A folder of stand-ins that fail to import, as the absent packages would, put first on sys.path."""
    stubs = tmp_path / "blocked"
    for name in EXTRAS:
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}' (not a dependency of clip-dissect)\", name={name!r})\n")
    return stubs


def dissect_plain(stubs, *args):
    env = dict(os.environ, DISSECT_QUIET="", PYTHONPATH=os.pathsep.join([str(stubs), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "dissect.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow  # 42 s; CI runs the same commands from a real plain install (scripts/check_plain_install.sh)
def test_demo_show_info_and_report_run_without_the_test_extras(tmp_path):
    stubs = _blocked(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(stubs)))
    assert probe.returncode != 0 and "not a dependency" in probe.stderr  # the premise: pandas cannot be imported
    r = dissect_plain(stubs, "demo", "-o", tmp_path / "demo", "--n-images", 300, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    labels = tmp_path / "demo" / "labels-mixed-softwpmi.parquet"
    for args in (["show", labels, "--limit", 3], ["show", labels, "--json", "--limit", 2], ["show", labels, "--csv"],
                 ["info", tmp_path / "demo" / "activations.h5"], ["info", labels],
                 ["report", "--labels", labels, "--activations", tmp_path / "demo" / "activations.h5",
                  "-o", tmp_path / "report", "--top-images", 2]):
        r = dissect_plain(stubs, *args)
        assert r.returncode == 0, (args, r.stderr[-3000:])
        assert "internal error" not in r.stderr
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.skipif(not __import__("shutil").which("make"), reason="make is not installed")
def test_make_demo_installs_the_runtime_only_and_can_take_the_cpu_wheel(tmp_path):
    """Issue #24: `make demo` built a 6.4 GB environment with the test extras to run a CPU demo in 20 seconds."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"

    def plan(target, *extra):
        r = subprocess.run(["make", "-n", "-C", str(root), target, f"VENV={venv}", *extra], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if "pip install" in ln]

    demo = plan("demo")
    assert demo and not any("[test]" in ln or "[docs]" in ln for ln in demo), demo
    assert any(ln.rstrip().endswith("install -e .") for ln in demo), demo
    cpu = plan("demo", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    torch_first = [k for k, ln in enumerate(cpu) if "torch" in ln and "whl/cpu" in ln]
    assert torch_first and torch_first[0] < next(k for k, ln in enumerate(cpu) if "install -e ." in ln), cpu
    assert any('".[test]"' in ln for ln in plan("test")), plan("test")
