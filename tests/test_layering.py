"""The house's layering: cli -> pipeline/demo -> stages -> engine -> pieces -> runtime -> errors, and no import circle.

Every import of every dissect module is read from its source (function-level imports too) and checked
against the layer map below: a module may import its own layer or any layer below, never one above,
and the modules of one layer import each other without a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dissect"

LAYERS = [
    {"errors", "fingerprint", "budget", "settings"},
    {"runtime"},
    {"artifacts", "artifacts.formats", "artifacts.files", "artifacts.hdf5", "artifacts.tables", "artifacts.tensors",
     "artifacts.external", "artifacts.sniff", "artifacts.runs", "artifacts.masks", "artifacts.stored_maps", "maps",
     "concepts", "probe", "hooks", "models", "hf", "clip", "similarity", "scoring", "split",
     "evaluate", "evaluate.metrics", "evaluate.sanity", "evaluate.mixture", "evaluate.segmentation", "evaluate.ablation",  # lazily imported
     "directions", "correlate", "sae_files", "sae_hub", "artifacts.torch_pickle"},
    {"passes", "shards"},
    {"embed", "record", "inputs", "label", "evaluate.presence", "decompose"},
    {"compose", "evaluate.protocol", "evaluate.results", "evaluate.resampling", "evaluate.simulate",
     "evaluate.sanity_report", "evaluate.segment", "evaluate.ablate", "report", "describe", "explain", "compare", "report_compare"},
    {"pipeline", "demo", "demo.world", "demo.planted", "demo.scenes", "demo.specs", "demo.two_worlds", "demo.checkpoints", "demo.ablations"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """The dissect modules ``name`` imports (anywhere in its source), as layer-map names."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("dissect"):
                target = node.module.split(".")[1:]
            else:
                continue
            candidates = [".".join(target)] + [".".join(target + [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [".".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("dissect.")]
        else:
            continue
        found |= {c for c in candidates if c in LAYER}
    return found - {name}


def test_every_module_has_a_layer():
    names = set(_modules()) - {"cli"}  # the installed dissect.cli package lives in cli/, outside this tree
    assert names <= set(LAYER), sorted(names - set(LAYER))
    assert set(LAYER) <= names, sorted(set(LAYER) - names)


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for name, path in _modules().items():
        for imported in _imports(name, path):
            if LAYER[imported] > LAYER[name]:
                wrong.append(f"{name} (layer {LAYER[name]}) imports {imported} (layer {LAYER[imported]})")
    assert not wrong, wrong


def test_no_import_circle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
