"""Writing safely: outputs checked before any work, files that appear only once complete, one process per output,
and the provenance every artifact records."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..errors import UsageError
from .formats import STDOUT


# ---------------------------------------------------------------------------
# The inputs a command reads: no output may replace one or land inside a probe folder
# ---------------------------------------------------------------------------

_READ: set[str] = set()
_PROBE_FOLDERS: set[str] = set()
_GROWN: set[str] = set()
#: Whether a command is running (the CLI starts one with ``forget_inputs``): only then are the inputs noted so far
#: this command's own. A library caller (a notebook) reads and writes freely across calls.
_COMMAND = [False]


def _resolved(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def note_inputs(*paths: str | os.PathLike) -> None:
    """Record files this command reads (every reader of dissect's inputs calls it): no output may replace them."""
    for p in paths:
        if p is not None and str(p) != STDOUT:
            _READ.add(_resolved(p))


def note_probe_folder(folder: str | os.PathLike) -> None:
    """Record a probe folder this command reads: no output may be written inside it (the next pass would read an
    output there as a probe image, or replace one)."""
    _PROBE_FOLDERS.add(_resolved(folder))


def grows(out: str | os.PathLike) -> None:
    """``out`` is an artifact this command grows: it reads the file's previous version (to reuse what it holds) and
    replaces it, which is not overwriting an input."""
    _GROWN.add(_resolved(out))


def forget_inputs() -> None:
    """Start a new command: forget the inputs of the last one (the CLI calls it before each command); from then on
    outputs are checked against the inputs noted."""
    _READ.clear()
    _PROBE_FOLDERS.clear()
    _GROWN.clear()
    _COMMAND[0] = True


def end_command() -> None:
    """The command is over (the CLI calls it after each one): library calls that follow are not checked against its
    inputs."""
    forget_inputs()
    _COMMAND[0] = False


def refuse_clobber(out: str | os.PathLike) -> None:
    """Refuse an output that is a file this command reads, or lies inside a probe folder it reads (one line). Outside
    a command (library calls), nothing is refused here: the explicit inputs of ``check_output_path`` still are."""
    if not _COMMAND[0]:
        return
    p = _resolved(out)
    if p in _READ and p not in _GROWN:
        raise UsageError(f"output {out} would overwrite an input of this command", hint="choose another -o path")
    for folder in _PROBE_FOLDERS:
        if p == folder or p.startswith(folder.rstrip(os.sep) + os.sep):
            raise UsageError(f"output {out} is inside the probe folder {folder}, which this command reads",
                             hint="write outside the probe folder (its images are inputs; outputs there would be "
                                  "read as images by the next pass)")


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike] = (), kind: str = "an HDF5 file") -> Path:
    """Validate an output path before any work is done: its folder exists and is writable, it is no folder, and it
    replaces none of ``inputs`` nor any input this command has read so far (``note_inputs``, ``note_probe_folder``;
    ``atomic_path`` checks the latter again when it writes). ``kind`` names what is written, for ``-o -``."""
    if str(out) == STDOUT:
        raise UsageError(f"-o -: this command writes {kind}, which cannot go to standard output",
                         hint="give a file path with -o")
    p = Path(out)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {parent} does not exist", hint=f"create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output folder {parent} is not writable", hint="choose another -o path")
    if p.is_dir():
        raise UsageError(f"output {p} is a folder", hint="give a file path with -o")
    for i in inputs:
        if i is not None and str(i) != STDOUT and Path(i).exists() and p.exists() and p.resolve() == Path(i).resolve():
            raise UsageError(f"output {p} would overwrite the input {i}", hint="choose another -o path")
    refuse_clobber(p)
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Set when HDF5 failed to write a file: the library is then left in a state in which its exit handler can crash
#: the process, so the console script leaves with os._exit (cli/main.py) after its one-line message.
HDF5_WRITE_FAILED = False


def _hdf5_write_error(e: RuntimeError, final: Path) -> OSError | None:
    """The OSError behind an HDF5 RuntimeError such as 'file write failed: ... errno = 28, error message = ...'."""
    import re

    m = re.search(r"errno = (\d+), error message = '([^']*)'", str(e))
    if "write failed" not in str(e) and m is None:
        return None
    return OSError(int(m.group(1)) if m else None, m.group(2) if m else "HDF5 could not write the file", str(final))


class _QuietH5pyDealloc:
    """While HDF5 writes a file, a failing write (disk full) also makes h5py's object destructors print
    'Exception ignored in ... __dealloc__' tracebacks; the one-line error says it all, so they are dropped."""

    def __enter__(self):
        self.previous, self.previous_except = sys.unraisablehook, sys.excepthook
        sys.unraisablehook, sys.excepthook = self, self.excepthook  # Cython prints through both
        return self

    def __call__(self, unraisable):
        if "h5py" not in repr(getattr(unraisable, "object", "")):
            self.previous(unraisable)

    def excepthook(self, kind, value, tb):
        import traceback

        frames = traceback.extract_tb(tb) if tb is not None else []
        if not (issubclass(kind, RuntimeError) and frames and "h5py" in frames[-1].filename):
            self.previous_except(kind, value, tb)

    def __exit__(self, *exc):
        if exc[0] is None:
            sys.unraisablehook, sys.excepthook = self.previous, self.previous_except


def check_room(final: str | os.PathLike, nbytes: int) -> None:
    """Refuse, before writing, a file of about ``nbytes`` that the disk or the shell's file-size limit cannot hold."""
    from ..runtime import human_bytes

    final = Path(final)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and nbytes > limit:
            raise UsageError(f"{final} needs about {human_bytes(nbytes)} but this shell limits files to "
                             f"{human_bytes(limit)} (ulimit -f)", hint="raise the limit (ulimit -f unlimited) and run again")
    except (ImportError, ValueError, OSError):
        pass
    try:
        free = shutil.disk_usage(final.parent if str(final.parent) else ".").free
    except OSError:
        return
    if nbytes > free:
        raise UsageError(f"{final} needs about {human_bytes(nbytes)} but its disk has {human_bytes(free)} free",
                         hint="free some space, or write elsewhere with -o")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, nbytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    A crash, Ctrl-C or error leaves no file under the final name and removes the
    temporary one, so an artifact is only ever visible once complete. The file gets the
    permissions the umask gives (as any program's new files), not mkstemp's 0600.
    ``nbytes``: the size about to be written, checked against free space and ``ulimit -f`` first.
    """
    final = Path(final)
    refuse_clobber(final)
    if nbytes is not None:
        check_room(final, nbytes)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _QuietH5pyDealloc():
            yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, RuntimeError):  # h5py's words for a failed write (disk full, ulimit -f)
            os_error = _hdf5_write_error(e, final)
            if os_error is not None:
                global HDF5_WRITE_FAILED
                HDF5_WRITE_FAILED = True
                raise os_error from None
        raise


class ProcessLock:
    """An exclusive lock on ``path`` held by this process (``flock``; released by the OS if the process dies).

    A second dissect that asks for the same lock is refused at once, in one line naming the
    process that holds it. Where ``fcntl`` is missing (Windows) no lock is taken.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what, self._f = Path(path), what, None
        try:
            import fcntl
        except ImportError:
            return
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UsageError(f"{what} is in use by another dissect ({holder})",
                             hint="wait for it to finish, or write to another -o") from None
        f.seek(0)
        f.truncate()
        import datetime

        f.write(f"pid {os.getpid()}, since {datetime.datetime.now().isoformat(timespec='seconds')}: "
                f"{' '.join(sys.argv)[:200]}")
        f.flush()
        self._f = f

    def release(self, remove: bool = False) -> None:
        """Let go of the lock (``remove``: delete the lock file first, while still holding it)."""
        if self._f is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._f.close()  # closing releases the flock
        self._f = None

    def __enter__(self) -> "ProcessLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release(remove=True)


def provenance(**extra: Any) -> str:
    """JSON provenance blob stored in every artifact."""
    import datetime

    info = {
        "tool": "dissect",
        "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv else "",
    }
    info.update(extra)
    return json.dumps(info, sort_keys=True, default=str)


def write_json(out: str | os.PathLike, data: Any) -> Path:
    """A JSON file (a summary, a manifest, a result), indented, written atomically."""
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return Path(out)
