"""Every command example in the docs works: the README and every page of the MkDocs site (docs/).

A fenced ``bash`` block that holds a ``dissect`` command, and every ``python`` block, carries a marker on the
line above it:

    <!-- test: run -->     run as written (bash -e, or python) in a folder where runs/demo is the demo world (the
                           session's `dissect demo -o runs/demo`, so a `dissect demo` line there is parsed, not rerun)
    <!-- test: parse -->   it needs real weights or data: each dissect command in it is parsed by the command line
                           itself (the command and every option exist, every value converts); python is compiled
                           and every name it imports from dissect must exist

A block with no marker fails here, so that no example goes unchecked;
``mkdocs build --strict`` (test_the_site_builds_with_no_warning) catches broken links.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!--\s*test:\s*(run|parse)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


def code_blocks(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, marker) of each shell or python block of a page (marker: the comment just above it)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if lang in ("bash", "sh", "shell", "python"):
            above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marker = MARKER.search(above)
            body = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j])
            out.append((i + 1, "python" if lang == "python" else "bash", body, marker.group(1) if marker else None))
        i = j + 1
    return out


def dissect_commands(code: str) -> list[list[str]]:
    """Every ``dissect ...`` command of a shell snippet, as its argument list (continuations joined, comments,
    pipes and ``&&`` chains split off, shell variables given example values)."""
    code = re.sub(r"\\\n", " ", code)
    commands = []
    for line in code.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        line = re.sub(r"\$\{?SLURM_ARRAY_TASK_ID\}?", "1", line)
        line = re.sub(r"\$\{?\w+\}?", "X", line)
        try:
            tokens = shlex.split(line, comments=False, posix=True)
        except ValueError:
            continue
        current: list[str] | None = None
        for tok in tokens + ["|"]:
            if tok in ("|", "&&", ";", "||", ">", "2>"):
                if current is not None:
                    commands.append(current)
                current = None
            elif current is not None:
                current.append(tok)
            elif tok == "dissect":
                current = []
    return commands


def parse_command(args: list[str]) -> None:
    """Parse ``dissect ARGS`` as the command line would, without running the command: unknown commands, unknown
    options and values that do not convert raise."""
    import typer

    from dissect.cli.main import app

    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("dissect", list(args))
    while hasattr(cmd, "resolve_command"):
        protected = getattr(ctx, "_protected_args", None)  # newer click keeps a group's command name here
        rest = [*(protected if protected is not None else ctx.protected_args), *ctx.args]
        if not rest:
            break
        name, sub, rest = cmd.resolve_command(ctx, rest)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub


#: (page, line, language, code, marker) of every example that must say how it is tested
EXAMPLES = [(p, line, lang, code, marker) for p in PAGES for line, lang, code, marker in code_blocks(p)
            if lang == "python" or dissect_commands(code)]


def _id(example) -> str:
    return f"{example[0].relative_to(ROOT)}:{example[1]}"


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_every_example_says_how_it_is_tested(example):
    path, line, _, _, marker = example
    assert marker is not None, (f"{path.relative_to(ROOT)}:{line}: an example needs <!-- test: run --> or "
                                "<!-- test: parse --> on the line above it (tests/test_docs.py)")


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[4] is not None and e[2] == "bash"], ids=_id)
def test_every_dissect_command_in_the_docs_parses(example):
    for args in dissect_commands(example[3]):
        try:
            parse_command(args)
        except SystemExit as e:  # --help, --version
            assert e.code in (0, None), args
        except Exception as e:  # click's errors, from click itself or Typer's vendored copy
            pytest.fail(f"{_id(example)}: `dissect {shlex.join(args)}` does not parse: {e}")


@pytest.fixture(scope="module")
def docs_world(demo_run, tmp_path_factory):
    """A folder whose runs/demo is the demo world, as the docs' runnable examples expect."""
    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(demo_run[0], folder / "runs" / "demo")
    return folder


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[4] == "parse" and e[2] == "python"], ids=_id)
def test_every_python_example_compiles_and_imports_what_exists(example):
    import ast
    import importlib

    tree = ast.parse(example[3])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dissect":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{_id(example)}: {node.module} has no {alias.name}"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[4] == "run"], ids=_id)
def test_every_runnable_example_runs(example, docs_world, tmp_path):
    path, line, lang, code, _ = example
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               DISSECT_CACHE=str(tmp_path / "cache"), DISSECT_QUIET="1")
    if lang == "python":
        script = code
        command = [sys.executable, "-c", code]
    else:
        # `dissect demo -o runs/demo` was run by the session (its result is runs/demo); the rest runs as written
        script = "\n".join(ln for ln in re.sub(r"\\\n", " ", code).splitlines() if not re.match(r"\s*dissect demo\b", ln))
        command = ["bash", "-euo", "pipefail", "-c", script]
    r = subprocess.run(command, cwd=docs_world, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{_id(example)} failed:\n{script}\n--- stderr ---\n{r.stderr[-3000:]}"


def test_the_site_builds_with_no_warning(tmp_path):
    """mkdocs build --strict: every page in the nav, every link and anchor found."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def test_the_readme_is_short():
    """The README is the front door: what dissect is, the two commands, one example, links (the rest is the site)."""
    assert len((ROOT / "README.md").read_bytes()) < 20_000
