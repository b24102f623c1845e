"""Entry point of the ``dissect`` console script."""

from __future__ import annotations

from . import compare, compose, decompose, demo, embed, evaluate, explain, label, record, report, run, show  # noqa: F401  (commands register themselves)
from .app import app


def _stop_on_signal(signum, _frame):
    from dissect.errors import Terminated

    raise Terminated(signum)


def main() -> None:
    import signal

    # SIGTERM (batch schedulers, `kill`) unwinds like Ctrl-C: temporary files are removed
    # and the command ends with one line and exit code 128 + signal.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    code = 1
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    finally:
        from dissect.shards import distributed_world, shutdown_distributed

        if distributed_world() is not None:  # torchrun: leave the process group together
            shutdown_distributed(success=code == 0)
        _leave_if_hdf5_failed(code)


def _leave_if_hdf5_failed(code: int) -> None:
    """After HDF5 failed to write a file (disk full, ulimit -f) its library's exit handler can crash the process
    (SIGSEGV in H5_term_library): the one-line message is out, so leave without running it."""
    import os
    import sys

    artifacts = sys.modules.get("dissect.artifacts.files")
    if artifacts is not None and artifacts.HDF5_WRITE_FAILED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code or 1)


if __name__ == "__main__":
    main()
