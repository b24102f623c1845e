"""`dissect label` on artifacts written by another program, from the documented schema only.

images.h5, text.h5 and activations.h5 are written here with h5py directly (dissect
is not used to write them), then the real CLI labels them and the Parquet output is
checked against the float64 reference in tests/reference.py.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dissect.cli.main import app
from dissect.similarity import resolve_params

from reference import reference_similarity, reference_top

N_IMAGES, DIM, N_CONCEPTS = 200, 32, 30
LAYERS = {"layer4": 16, "fc": 10}  # name -> neurons (half planted, half background)
CLIP_MODEL, CLIP_PRETRAINED = "ViT-X-99", "external-lab"
TOP = 3
SIMS = ["softwpmi", "wpmi", "cos", "cos-cubed", "rank-reorder"]
CLI_PARAMS = {"softwpmi": {"top_k": "20"}, "wpmi": {"top_k": "20"}}  # N is small

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------
# Data and writers (h5py only, following docs/artifacts.md)
# ---------------------------------------------------------------------------

def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    shared = _unit(rng.standard_normal(DIM))
    directions = _unit(rng.standard_normal((N_CONCEPTS, DIM)))
    T = _unit(shared + directions).astype(np.float32)
    shown = rng.integers(0, N_CONCEPTS, N_IMAGES)
    I = _unit(shared + directions[shown] + 2.0 * _unit(rng.standard_normal((N_IMAGES, DIM)))).astype(np.float32)
    P = I.astype(np.float64) @ T.astype(np.float64).T
    Z = (P - P.mean(0)) / P.std(0)
    layers = {}
    for name, C in LAYERS.items():
        q = np.empty((N_IMAGES, C))
        planted = rng.permutation(N_CONCEPTS)[: C // 2]
        for k, m in enumerate(planted):
            q[:, k] = Z[:, m] + 0.3 * rng.standard_normal(N_IMAGES)
        for k in range(C // 2, C):
            q[:, k] = Z @ rng.standard_normal(N_CONCEPTS) / math.sqrt(N_CONCEPTS) + 0.5 * rng.standard_normal(N_IMAGES)
        layers[name] = q.astype(np.float32)
    ids = [f"probe/class{i % 7}/img_{i:04d}.jpg" for i in range(N_IMAGES)]
    # Non-ASCII concepts: the strings must round-trip as UTF-8.
    concepts = [f"concept {m:02d}" for m in range(N_CONCEPTS)]
    concepts[1], concepts[2], concepts[3] = "café", "naïve bayes", "über-dog"
    return ids, I, concepts, T, layers


STR = h5py.string_dtype("utf-8")


def write_images(path, ids, emb, clip_model=CLIP_MODEL, fmt="dissect/image-embeddings"):
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=np.asarray(emb, dtype=np.float32))
        f.create_dataset("ids", data=ids, dtype=STR)
        f.attrs["format"] = fmt
        f.attrs["version"] = 1
        f.attrs["clip_model"] = clip_model
        f.attrs["clip_pretrained"] = CLIP_PRETRAINED
    return path


def write_text(path, concepts, emb, clip_model=CLIP_MODEL, fmt="dissect/text-embeddings"):
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=np.asarray(emb, dtype=np.float32))
        f.create_dataset("concepts", data=concepts, dtype=STR)
        f.attrs["format"] = fmt
        f.attrs["version"] = 1
        f.attrs["clip_model"] = clip_model
        f.attrs["clip_pretrained"] = CLIP_PRETRAINED
    return path


def write_activations(path, ids, layers, fmt="dissect/activations"):
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=ids, dtype=STR)
        group = f.create_group("layers")
        for name, q in layers.items():
            ds = group.create_dataset(name, data=np.asarray(q, dtype=np.float32))
            ds.attrs["summary"] = "mean"
        f.attrs["format"] = fmt
        f.attrs["version"] = 1
        f.attrs["model"] = "someone-elses-net"
    return path


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, data):
    ids, I, concepts, T, layers = data
    d = tmp_path_factory.mktemp("external")
    return {
        "images": write_images(d / "images.h5", ids, I),
        "text": write_text(d / "text.h5", concepts, T),
        "activations": write_activations(d / "activations.h5", ids, layers),
    }


def label(images, text, activations, out, sim, extra=()):
    args = ["label", "--images", str(images), "--text", str(text), "--activations", str(activations), "--sim", sim]
    for k, v in CLI_PARAMS.get(sim, {}).items():
        args += ["--param", f"{k}={v}"]
    args += ["--top", str(TOP), "-o", str(out), *extra]
    return runner.invoke(app, args)


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def relative_difference(got, ref) -> float:
    """max |got - ref| / max(|ref|, 1% of the largest |ref| of the neuron)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    tiny = 1e-2 * np.abs(ref).max(axis=-1, keepdims=True)
    return float((np.abs(got - ref) / np.maximum(np.abs(ref), np.maximum(tiny, 1e-300))).max())


# ---------------------------------------------------------------------------
# Labels from external artifacts equal the reference
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled(artifacts, tmp_path_factory):
    """sim -> (pyarrow Table, CLI output); each similarity is run once for the module."""
    d = tmp_path_factory.mktemp("labels")
    out = {}

    def get(sim):
        if sim not in out:
            path = d / f"labels-{sim}.parquet"
            result = label(artifacts["images"], artifacts["text"], artifacts["activations"], path, sim)
            assert result.exit_code == 0, result.output
            out[sim] = pq.read_table(path)
        return out[sim]

    return get


@pytest.mark.parametrize("sim", SIMS)
def test_labels_schema(labelled, sim):
    table = labelled(sim)
    expected = {
        "layer": pa.string(),
        "unit": pa.int32(),
        "label": pa.string(),
        "similarity": pa.float64(),
        "candidates": pa.list_(pa.string()),
        "candidate_similarities": pa.list_(pa.float64()),
    }
    assert table.schema.names == list(expected)
    for name, typ in expected.items():
        assert table.schema.field(name).type == typ, name
    assert table.num_rows == sum(LAYERS.values())
    rows = table.to_pylist()
    for layer, C in LAYERS.items():
        assert [r["unit"] for r in rows if r["layer"] == layer] == list(range(C))
    for r in rows:
        assert len(r["candidates"]) == len(r["candidate_similarities"]) == TOP
        assert r["label"] == r["candidates"][0] and r["similarity"] == r["candidate_similarities"][0]


@pytest.mark.parametrize("sim", SIMS)
def test_labels_equal_reference(labelled, data, sim):
    ids, I, concepts, T, layers = data
    params = resolve_params(sim, CLI_PARAMS.get(sim))
    rows = labelled(sim).to_pylist()
    for layer, q in layers.items():
        ref = reference_similarity(sim, q, I, T, params)
        best = reference_top(ref, TOP)
        # Test data check: the reference's top-3 are well apart, so the comparison is well posed.
        for values in ref:
            top = np.sort(values)[::-1][: TOP + 1]
            assert np.abs(np.diff(top)).min() > 1e-6 * np.abs(values).max()
        got = [r for r in rows if r["layer"] == layer]
        assert [r["label"] for r in got] == [concepts[i] for i in best[:, 0]]
        assert [r["candidates"] for r in got] == [[concepts[i] for i in b] for b in best]
        ref_best = np.take_along_axis(ref, best, axis=1)
        assert relative_difference([r["similarity"] for r in got], ref_best[:, 0]) < 1e-4
        assert relative_difference([r["candidate_similarities"] for r in got], ref_best) < 1e-4


# ---------------------------------------------------------------------------
# Alignment and refusals
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sim", ["softwpmi", "rank-reorder"])
def test_activations_are_aligned_to_images_by_id(tmp_path, artifacts, data, labelled, sim):
    ids, I, concepts, T, layers = data
    order = np.random.default_rng(3).permutation(N_IMAGES)
    shuffled = write_activations(tmp_path / "shuffled.h5", [ids[i] for i in order], {n: q[order] for n, q in layers.items()})
    out = tmp_path / "labels.parquet"
    result = label(artifacts["images"], artifacts["text"], shuffled, out, sim)
    assert result.exit_code == 0, result.output
    got, want = pq.read_table(out).to_pylist(), labelled(sim).to_pylist()
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["candidates"] for r in got] == [r["candidates"] for r in want]
    np.testing.assert_allclose([r["candidate_similarities"] for r in got], [r["candidate_similarities"] for r in want], rtol=1e-12)


def test_ids_that_do_not_match_are_refused(tmp_path, artifacts, data):
    ids, I, concepts, T, layers = data
    other = list(ids)
    other[17] = "probe/elsewhere/not_in_images.jpg"
    acts = write_activations(tmp_path / "other-probe.h5", other, layers)
    out = tmp_path / "labels.parquet"
    result = label(artifacts["images"], artifacts["text"], acts, out, "cos")
    assert result.exit_code != 0
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    assert str(artifacts["images"]) in lines[0] and str(acts) in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert list(tmp_path.glob("*labels*")) == []  # no temporary file left behind either


def test_fewer_activation_rows_than_images_is_refused(tmp_path, artifacts, data):
    ids, I, concepts, T, layers = data
    acts = write_activations(tmp_path / "subset.h5", ids[:-5], {n: q[:-5] for n, q in layers.items()})
    out = tmp_path / "labels.parquet"
    result = label(artifacts["images"], artifacts["text"], acts, out, "cos")
    assert result.exit_code != 0
    assert len(error_lines(result)) == 1, result.output
    assert str(artifacts["images"]) in result.output and str(acts) in result.output
    assert not out.exists()


def test_text_from_another_clip_model_is_refused(tmp_path, artifacts, data):
    ids, I, concepts, T, layers = data
    text = write_text(tmp_path / "text-other.h5", concepts, T, clip_model="RN50-other")
    out = tmp_path / "labels.parquet"
    result = label(artifacts["images"], text, artifacts["activations"], out, "cos")
    assert result.exit_code != 0
    assert CLIP_MODEL in result.output and "RN50-other" in result.output, result.output
    assert len(error_lines(result)) == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "which,fmt",
    [
        ("images", "dissect/text-embeddings"),
        ("images", "clip/embeddings"),
        ("text", "dissect/image-embeddings"),
        ("activations", "dissect/activation"),
        ("activations", ""),
    ],
)
def test_wrong_format_attribute_is_refused_without_traceback(tmp_path, artifacts, data, which, fmt):
    ids, I, concepts, T, layers = data
    paths = dict(artifacts)
    bad = tmp_path / f"{which}.h5"
    if which == "images":
        write_images(bad, ids, I, fmt=fmt)
    elif which == "text":
        write_text(bad, concepts, T, fmt=fmt)
    else:
        write_activations(bad, ids, layers, fmt=fmt)
    paths[which] = bad
    out = tmp_path / "labels.parquet"
    result = label(paths["images"], paths["text"], paths["activations"], out, "cos")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "internal error" not in result.output
    assert str(bad) in result.output, result.output
    assert not out.exists()
