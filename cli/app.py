"""The Typer app and the single place that turns library errors into messages."""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Annotated, Callable

import typer
import typer.core

from dissect import __version__

# click's UsageError and NoArgsIsHelpError, from click itself or from the copy newer Typer versions vendor.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_NO_ARGS_IS_HELP = getattr(sys.modules[_USAGE_ERROR.__module__], "NoArgsIsHelpError", ())


_MARKUP_TAG = re.compile(r"(?<!\\)\[(?=[a-z#/@])")


class _PlainHelp(typer.core.TyperGroup):
    """Help texts are plain text: their brackets ("[default: 2048]", "W[c, j]") are escaped before Typer's rich
    formatting would read "[default: ...]" as a markup tag and drop it, leaving a stray space before the period."""

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and typer.core.HAS_RICH and getattr(cmd, "rich_markup_mode", "rich") == "rich" \
                and not getattr(cmd, "_dissect_escaped", False):
            cmd.help = _escape_markup(cmd.help)
            cmd.short_help = _escape_markup(cmd.short_help)
            for p in cmd.params:
                if getattr(p, "help", None):
                    p.help = _escape_markup(p.help)
            cmd._dissect_escaped = True
        return cmd


def _escape_markup(text: str | None) -> str | None:
    return _MARKUP_TAG.sub(r"\\[", text) if text else text


class _OneLineUsageErrors(_PlainHelp):
    """Bad arguments to a command (a missing option, a value out of range) end in one line and exit code 2,
    like every other user error, instead of click's usage box."""

    def invoke(self, ctx):
        from dissect.artifacts import end_command, forget_inputs

        forget_inputs()  # each command guards its own inputs (tests run many commands in one process)
        try:
            return super().invoke(ctx)
        except _NO_ARGS_IS_HELP:
            raise
        except _USAGE_ERROR as e:
            if _state["debug"]:
                raise
            cmd = e.ctx.command_path if e.ctx is not None else "dissect"
            message = e.format_message().rstrip().rstrip(".")
            _err(f"{message}{'' if message.endswith(('?', '!')) else '.'} See '{cmd} --help'")
            raise typer.Exit(2) from None
        finally:
            end_command()


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="dissect",
    help="Label the neurons of vision networks with CLIP-Dissect (Oikarinen & Weng, ICLR 2023).\n\n"
    "Pipeline: embed-images + embed-text (CLIP) -> record (target activations) -> label. "
    "`dissect run` does all of it in one run folder, reusing what is already there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": bool(os.environ.get("DISSECT_DEBUG"))}


def _version(value: bool):
    if value:
        typer.echo(f"dissect {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also DISSECT_DEBUG=1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
):
    from dissect.runtime import set_quiet

    # Set on every invocation: several commands can run in one process (tests, notebooks).
    _state["debug"] = debug or bool(os.environ.get("DISSECT_DEBUG"))
    set_quiet(quiet or bool(os.environ.get("DISSECT_QUIET")))


def _err(message: str) -> None:
    from .output import error

    error(message)


class _ClosedStdout:
    """Standard output when the shell closed it (``>&-``): what a command writes there ends in one line."""

    closed = False  # so that code which checks before writing gets to the write, and its one-line error

    def write(self, data):
        from dissect.errors import UsageError

        raise UsageError("standard output is closed: there is nowhere to write the output",
                         hint="give a file path with -o, or pipe the output into a program")

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        import io

        raise io.UnsupportedOperation("standard output is closed")

    @property
    def buffer(self):
        return self


def _left_behind() -> tuple[str, str]:
    """What a failed or interrupted command leaves, and how a rerun uses it: the checkpoints it resumes from."""
    passes = sys.modules.get("dissect.passes")
    kept = [c for c in (passes.live_checkpoints() if passes is not None else []) if c.done()]
    if not kept:
        return "no partial output was kept", "run the same command again to redo it"
    chunks = sum(len(c.done()) for c in kept)
    return (f"{chunks} finished chunk(s) are kept in {', '.join(str(c.dir) for c in kept)}, nothing under the output "
            f"name", "run the same command again to resume from them")


_ERRNO_HINTS = {
    "ENOSPC": "free some space on that disk, or write elsewhere with -o",
    "EDQUOT": "your disk quota is full: free some space, or write elsewhere with -o",
    "EFBIG": "the file is larger than this shell allows: raise the limit (ulimit -f unlimited) or write elsewhere",
    "EACCES": "check the permissions of that path, or write elsewhere with -o",
    "EPERM": "check the permissions of that path, or write elsewhere with -o",
    "EROFS": "that file system is read-only: write elsewhere with -o",
}


def handle_errors(fn: Callable) -> Callable:
    """Run a command; a DissectError becomes one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dissect.errors import DissectError

        if sys.stdout is None:  # `dissect ... >&-`: the shell gave us no standard output
            sys.stdout = _ClosedStdout()
        if "dissect.passes" in sys.modules:  # several commands in one process (tests, notebooks): this one's only
            sys.modules["dissect.passes"]._LIVE.clear()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except DissectError as e:
            if _state["debug"]:
                raise
            _err(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            if _state["debug"]:
                raise
            signum = getattr(e, "signum", 2)
            what = "interrupted" if signum == 2 else f"stopped by signal {signum}"
            left, rerun = _left_behind()
            _err(f"{what}; {left}. {rerun[0].upper()}{rerun[1:]}")
            raise typer.Exit(128 + signum) from None
        except MemoryError:
            if _state["debug"]:
                raise
            _err("out of memory. Lower --batch-size, or --max-memory for label")
            raise typer.Exit(1) from None
        except BrokenPipeError:
            # The reader of `-o -` went away (e.g. `| head`): not an error of ours.
            sys.stderr.close()
            raise typer.Exit(1) from None
        except OSError as e:
            if _state["debug"]:
                raise
            if e.errno is None:
                _err(f"internal error: {type(e).__name__}: {e}. Re-run with --debug for the traceback and please report it")
                raise typer.Exit(1) from None
            # Disk full, permission lost, a vanished folder: the system's words, the file, what to do.
            import errno as errno_names

            where = f" ({e.filename})" if e.filename else ""
            todo = _ERRNO_HINTS.get(errno_names.errorcode.get(e.errno, ""), "fix it (free space, permissions)")
            left, rerun = _left_behind()
            _err(f"{e.strerror or e}{where}; {left}. {todo[0].upper() + todo[1:]}, then {rerun}")
            raise typer.Exit(1) from None
        except Exception as e:  # a bug: still one line unless --debug
            if _state["debug"]:
                raise
            _err(f"internal error: {type(e).__name__}: {e}. Re-run with --debug for the traceback and please report it")
            raise typer.Exit(1) from None

    return wrapper


def command(*args, **kwargs):
    """app.command with the error boundary applied."""

    def deco(fn):
        return app.command(*args, **kwargs)(handle_errors(fn))

    return deco


def subcommand(typer_app: typer.Typer, *args, **kwargs):
    """typer_app.command with the error boundary applied (commands of a sub-app such as `dissect evaluate`)."""

    def deco(fn):
        return typer_app.command(*args, **kwargs)(handle_errors(fn))

    return deco


class DefaultCommandGroup(_PlainHelp):
    """A group whose first argument, when it names no subcommand, goes to the default one.

    `dissect evaluate labels.parquet --truth imagenet` runs the (hidden) default
    command; `dissect evaluate stability ...` runs a subcommand.
    """

    default_command = "labels"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
