"""Process-wide plumbing shared by the stages: devices, progress bars, messages.

Progress and messages always go to standard error, so standard output stays free
for data (``-o -``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import UsageError

_quiet = bool(os.environ.get("DISSECT_QUIET"))


def user_function(path: str, func: str, kind: str, error: type = UsageError, hint: str | None = None):
    """The function ``func`` of the user's Python file ``path`` (``--model file.py:fn``, ``--directions file.py:fn``),
    imported under a name of its own; one-line ``error``s for a missing file, a failing import or no such function."""
    import hashlib
    import importlib.util

    p = Path(path)
    if not p.is_file():
        raise error(f"{kind} file {path} does not exist", hint=hint)
    tag = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]
    mod_spec = importlib.util.spec_from_file_location(f"dissect_user_{kind.split()[0]}_{tag}", p)
    module_obj = importlib.util.module_from_spec(mod_spec)
    import io

    argv, said = sys.argv, io.StringIO()
    sys.argv = [str(p)]  # a module that parses arguments at import sees none of dissect's
    try:
        with contextlib.redirect_stderr(said):
            mod_spec.loader.exec_module(module_obj)
        sys.stderr.write(said.getvalue())  # what an import that worked printed, as it would have
    except SystemExit as e:
        last = (said.getvalue().strip().splitlines() or [""])[-1][:200]
        raise error(f"importing {path} exited (sys.exit({e.code!r})) instead of defining {func!r}"
                    + (f": {last}" if last else ""),
                    hint="keep argument parsing and exits under `if __name__ == '__main__':`") from None
    except Exception as e:
        raise error(f"importing {path} failed: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        sys.argv = argv
    fn = getattr(module_obj, func, None)
    if not callable(fn):
        raise error(f"{path} has no function {func!r}")

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SystemExit as e:
            raise error(f"{path}:{func} exited (sys.exit({e.code!r})) instead of returning its {kind}",
                        hint=f"make {func} return the {kind}; raise an exception to report a problem") from None

    return guarded


def user_cache() -> Path:
    """~/.cache/dissect (or under $XDG_CACHE_HOME): the default home of dissect's caches and downloads."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "dissect"


def cache_dir() -> Path:
    """Cache for text embeddings made on demand and downloaded concept lists ($DISSECT_CACHE, default
    ~/.cache/dissect)."""
    env = os.environ.get("DISSECT_CACHE")
    return Path(env) if env else user_cache()


_hub_checked: dict[str, bool] = {}


def hub_offline(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether downloads from the Hugging Face hub must come from its local cache only.

    True when the user says so (HF_HUB_OFFLINE=1, DISSECT_OFFLINE=1) or when ``host`` cannot
    be reached (checked once per process, a ``timeout``-second connect). Then huggingface_hub
    is switched to offline mode, so that a missing file fails at once instead of after a
    minute of retries; files already in its cache still load. With a proxy configured the
    check is left to the hub itself.
    """
    if os.environ.get("DISSECT_OFFLINE") or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        _set_hub_offline()
        return True
    if host in _hub_checked:
        return _hub_checked[host]
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        _hub_checked[host] = False
        return False
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            offline = False
    except OSError:
        offline = True
    _hub_checked[host] = offline
    if offline:
        _set_hub_offline()
    return offline


def _set_hub_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants  # read at import: set it there too

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def printable(text: str) -> str:
    """``text`` with control and format characters (terminal escapes, RTL overrides, NUL) shown as escapes.

    Labels, ids and paths come from files anyone may write; printed raw, "\\x1b]0;..." retitles
    the terminal and "\\x1b[2J" clears it. Newlines and tabs become escapes too: one value, one line.
    """
    import unicodedata

    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def note(message: str) -> None:
    """A one-line status message on stderr (suppressed by --quiet)."""
    if not _quiet:
        console().print(printable(message), markup=False)


def warn(message: str) -> None:
    """A warning on stderr (always shown)."""
    from rich.markup import escape

    console().print(f"[yellow]warning:[/yellow] {escape(printable(message))}")


@contextlib.contextmanager
def progress(description: str, total: int, unit: str = "items") -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    if _quiet or total == 0:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console(),
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def resolve_device(spec: str | None = "auto"):
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:i' -> torch.device."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = os.environ.get("LOCAL_RANK")  # torchrun: one GPU per local rank
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}" if local else "cuda")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec} asked for, but CUDA is not available", hint="use --device cpu or auto")
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise UsageError(f"invalid device {spec!r}", hint="use auto, cpu, cuda or cuda:INDEX") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{spec}: only {torch.cuda.device_count()} CUDA device(s)", hint="pick a smaller index")
        return dev
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps asked for, but MPS is not available", hint="use --device cpu")
        return torch.device("mps")
    raise UsageError(f"invalid device {spec!r}", hint="use auto, cpu, cuda or cuda:INDEX")


#: Compute precisions of the forward passes (--precision).
PRECISIONS = ("fp32", "tf32", "paper", "auto", "bf16", "fp16")
#: The default: labels as fp32 gives them (docs/PERFORMANCE.md has the agreement of every mode).
DEFAULT_PRECISION = "fp32"


def resolve_precision(precision: str | None, device, role: str = "target") -> str:
    """The precision one pass runs in: fp32, tf32, bf16 or fp16.

    ``fp32`` (default) is true float32 (TF32 off, on GPUs too). ``tf32`` lets CUDA
    matmuls and convolutions use TensorFloat-32 (fp32 elsewhere). ``bf16``/``fp16`` run
    every pass under autocast. ``paper`` is the official code's setting: the CLIP model in
    fp16 on CUDA GPUs (as OpenAI's ``clip.load`` gives it), the target network in fp32.
    ``auto`` is the fastest: bf16 on CUDA GPUs that support it, else fp32. ``role`` is
    ``clip`` for the CLIP passes, ``target`` for the network's.
    """
    import torch

    p = (precision or DEFAULT_PRECISION).strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"use one of: {', '.join(PRECISIONS)}")
    if role not in ("clip", "target"):
        raise ValueError(f"role must be clip or target, not {role!r}")
    cuda = device.type == "cuda"
    if p == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if p == "paper":
        return "fp16" if role == "clip" and cuda else "fp32"
    if p == "tf32":
        return "tf32" if cuda else "fp32"
    return p


@contextlib.contextmanager
def autocast(device, precision: str):
    """The numerics of one forward pass: autocast for bf16/fp16 (callers cast outputs back to float32);
    TF32 off for fp32 and on for tf32 (CUDA matmuls and cuDNN convolutions), restored afterwards."""
    import torch

    if precision in ("bf16", "fp16"):
        with torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16):
            yield
        return
    if device.type != "cuda":
        yield
        return
    tf32 = precision == "tf32"
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


def available_memory(device=None) -> int | None:
    """Bytes of memory free for work on ``device`` (CUDA: free GPU memory; otherwise the host's MemAvailable),
    or None when it cannot be told."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        try:
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def stdout_stream():
    """The binary standard output, or a one-line UsageError when it is closed (``>&-``)."""
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        raise UsageError("standard output is closed: there is nowhere to write the output",
                         hint="give a file path with -o, or pipe the output into a program")
    return sys.stdout


def callable_module(module_name: str, function: str) -> None:
    """Let the module ``module_name`` be called as its ``function``.

    ``dissect.label`` and ``dissect.record`` name both a stage function (the package's face
    hands it out lazily) and the module that holds it; once that module is imported, Python
    binds the package attribute to the module. Calling the module runs the function, so that
    ``dissect.label(...)`` works whichever of the two the name is bound to.
    """
    import types

    class _Stage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function)(*args, **kwargs)

    sys.modules[module_name].__class__ = _Stage
