"""dissect.similarity against the slow float64 reference in tests/reference.py.

The inputs have planted structure: images show one concept each (plus a shared
direction and noise, so that P looks like real CLIP cosines, mostly positive),
12 neurons respond to one planted concept each in different ways (linearly, only
on the images that show it, quantised with many ties, at a tiny amplitude,
ReLU-like), and 36 background neurons respond to random mixtures of concepts.
The background population matters for SoftWPMI/WPMI: their λ correction compares
a neuron with the others of its layer, and with a dozen neurons alone the planted
neuron dominates many concepts at once and all of them saturate at log C.

Every comparison runs at several concept-block sizes (``chunk``), so the streaming
over blocks of concepts in ``score_layer`` is compared too.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from dissect.errors import UsageError
from dissect.similarity import SIMILARITIES, resolve_params
from dissect.scoring import score_layer

from reference import reference_similarity, reference_top

N_IMAGES, DIM, N_CONCEPTS = 300, 32, 40
N_PLANTED, N_BACKGROUND = 12, 36
SEED = 1
CHUNKS = [7, 4096]  # 7: six blocks of 7 and one of 5; 4096: all 40 concepts in one block
TOP = 5
RTOL = 1e-4
PMI = ("softwpmi", "wpmi")
PASSES = ["auto", "one", "two"]  # SoftWPMI/WPMI: one product pass with an accumulator, or two streamed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------
# Planted inputs
# ---------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=None)
def planted(seed: int = SEED):
    """q [N, C] float32, I [N, d] float32, T [M, d] float32, planted concept of neurons 0..11."""
    rng = np.random.default_rng(seed)
    shared = _unit(rng.standard_normal(DIM))
    directions = _unit(rng.standard_normal((N_CONCEPTS, DIM)))
    T = _unit(shared + directions).astype(np.float32)
    shown = rng.integers(0, N_CONCEPTS, N_IMAGES)  # the concept each image shows
    I = _unit(shared + directions[shown] + 2.0 * _unit(rng.standard_normal((N_IMAGES, DIM)))).astype(np.float32)
    P = I.astype(np.float64) @ T.astype(np.float64).T
    Z = (P - P.mean(0)) / P.std(0)
    concept = rng.permutation(N_CONCEPTS)[:N_PLANTED]
    q = np.empty((N_IMAGES, N_PLANTED + N_BACKGROUND))
    for k in range(N_PLANTED):
        z = Z[:, concept[k]]
        kind = k % 6
        if kind in (0, 1):  # linear in the concept's cosine
            q[:, k] = z + 0.3 * rng.standard_normal(N_IMAGES)
        elif kind == 2:  # fires only on the images that show the concept
            q[:, k] = (shown == concept[k]) * (1 + 0.2 * rng.standard_normal(N_IMAGES)) + 0.05 * z
        elif kind == 3:  # quantised: many tied activations (stable tie-breaking matters)
            q[:, k] = np.round(2 * z)
        elif kind == 4:  # tiny amplitude: cos-cubed's norm clamp is active
            q[:, k] = 1e-3 * (z + 0.3 * rng.standard_normal(N_IMAGES))
        else:  # ReLU-like
            q[:, k] = np.maximum(0, z + 0.3 * rng.standard_normal(N_IMAGES))
    for k in range(N_PLANTED, N_PLANTED + N_BACKGROUND):
        q[:, k] = Z @ rng.standard_normal(N_CONCEPTS) / math.sqrt(N_CONCEPTS) + 0.5 * rng.standard_normal(N_IMAGES)
    return q.astype(np.float32), I, T, concept


# (similarity, overrides): the paper's defaults, and non-default values of every parameter.
CASES = [
    ("softwpmi", {}),
    ("wpmi", {}),
    ("cos", {}),
    ("cos-cubed", {}),
    ("rank-reorder", {}),
    ("softwpmi", {"a": "5", "lam": "0.5", "top_k": "30", "p_start": "0.99", "p_end": "0.9", "min_prob": "1e-5"}),
    ("wpmi", {"a": "4", "lam": "1", "top_k": "10", "min_prob": "1e-6"}),
    ("rank-reorder", {"p": "2", "top_fraction": "0.1", "scale_p": "1", "n_perm": "3", "seed": "7"}),
    ("cos-cubed", {"min_norm": "0.5"}),
]


def _case_id(case) -> str:
    name, overrides = case
    return name + ("[" + ",".join(f"{k}={v}" for k, v in overrides.items()) + "]" if overrides else "")


CASE_IDS = [_case_id(c) for c in CASES]


@functools.lru_cache(maxsize=None)
def reference(case_id: str) -> np.ndarray:
    name, overrides = CASES[CASE_IDS.index(case_id)]
    q, I, T, _ = planted()
    return reference_similarity(name, q, I, T, resolve_params(name, overrides))


def tensors(q=None, I=None, T=None):
    q0, I0, T0, _ = planted()
    return tuple(torch.from_numpy(np.ascontiguousarray(x if x is not None else d)) for x, d in ((q, q0), (I, I0), (T, T0)))


def full_scores(name, params, chunk, T=None, passes="auto") -> np.ndarray:
    q, I, T = tensors(T=T)
    out = score_layer(name, q, I, T, params, full=True, chunk=chunk, passes=passes)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    return out.numpy()


def relative_difference(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max(|ref|, tiny), tiny = 1% of the largest |ref| of the same neuron.

    The floor keeps scores that cross zero (e.g. after the λ correction) from making a
    difference of 1e-9 look large; it is per neuron because neurons' scales differ by 1e6
    (the tiny-amplitude neuron under cos-cubed).
    """
    tiny = 1e-2 * np.abs(ref).max(axis=1, keepdims=True)
    return float((np.abs(got - ref) / np.maximum(np.abs(ref), np.maximum(tiny, 1e-300))).max())


def assert_separated(ref: np.ndarray, k: int, rel: float = 1e-6) -> None:
    """The reference's k best concepts of every neuron are k+1 distinct values apart (test data check).

    Without it, comparing top-k indices between float32-input and float64 code would be ill-posed.
    """
    for row, values in enumerate(ref):
        best = np.sort(values)[::-1][: k + 1]
        gap = np.abs(np.diff(best)).min() / np.abs(values).max()
        assert gap > rel, f"test data: neuron {row} has near-tied top concepts (relative gap {gap:.1e})"


# ---------------------------------------------------------------------------
# Agreement with the float64 reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_full_scores_match_float64_reference(case, chunk, passes):
    name, overrides = case
    if passes != "auto" and name not in PMI:
        pytest.skip("one or two product passes: SoftWPMI and WPMI only")
    ref = reference(_case_id(case))
    got = full_scores(name, resolve_params(name, overrides), chunk, passes=passes)
    assert got.shape == ref.shape == (N_PLANTED + N_BACKGROUND, N_CONCEPTS)
    assert np.isfinite(got).all()
    assert relative_difference(got, ref) < RTOL
    np.testing.assert_array_equal(got.argmax(axis=1), ref.argmax(axis=1))


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_top_concepts_match_float64_reference(case, chunk, passes):
    name, overrides = case
    if passes != "auto" and name not in PMI:
        pytest.skip("one or two product passes: SoftWPMI and WPMI only")
    ref = reference(_case_id(case))
    assert_separated(ref, TOP)
    q, I, T = tensors()
    done = []
    res = score_layer(name, q, I, T, resolve_params(name, overrides), top=TOP, chunk=chunk, progress=done.append, passes=passes)
    assert sum(done) == N_CONCEPTS
    assert tuple(res.indices.shape) == tuple(res.values.shape) == (N_PLANTED + N_BACKGROUND, TOP)
    assert res.values.dtype == torch.float64
    want = reference_top(ref, TOP)
    np.testing.assert_array_equal(res.indices.numpy(), want)
    assert relative_difference(res.values.numpy(), np.take_along_axis(ref, want, axis=1)) < RTOL
    assert (np.diff(res.values.numpy(), axis=1) <= 0).all(), "candidates are not best first"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_softwpmi_labels_planted_neurons_with_their_planted_concept(chunk):
    _, _, _, concept = planted()
    ref = reference("softwpmi")
    np.testing.assert_array_equal(ref[:N_PLANTED].argmax(axis=1), concept)  # the data is what it claims
    q, I, T = tensors()
    res = score_layer("softwpmi", q, I, T, resolve_params("softwpmi"), top=1, chunk=chunk)
    np.testing.assert_array_equal(res.indices[:N_PLANTED, 0].numpy(), concept)


def test_paper_defaults():
    assert resolve_params("softwpmi") == {"a": 10.0, "lam": 1.0, "top_k": 100, "p_start": 0.998, "p_end": 0.97, "min_prob": 1e-7}
    assert resolve_params("wpmi") == {"a": 2.0, "lam": 0.6, "top_k": 28, "min_prob": 1e-7}
    rr = resolve_params("rank-reorder")
    assert (rr["p"], rr["top_fraction"], rr["scale_p"]) == (3.0, 0.05, 0.5)
    assert resolve_params("cos") == {}
    assert resolve_params("cos-cubed") == {"min_norm": 1e-3}
    assert set(SIMILARITIES) == {"softwpmi", "wpmi", "rank-reorder", "cos", "cos-cubed"}


# ---------------------------------------------------------------------------
# Rank reorder's random baseline
# ---------------------------------------------------------------------------

def test_rank_reorder_is_deterministic_given_seed():
    a = full_scores("rank-reorder", resolve_params("rank-reorder", {"seed": "3"}), 7)
    b = full_scores("rank-reorder", resolve_params("rank-reorder", {"seed": "3"}), 4096)
    c = full_scores("rank-reorder", resolve_params("rank-reorder", {"seed": "3"}), 7)
    np.testing.assert_array_equal(a, c)
    assert relative_difference(b, a) < 1e-6  # the baseline does not depend on the blocks


def test_rank_reorder_changes_with_seed():
    a = full_scores("rank-reorder", resolve_params("rank-reorder", {"seed": "3"}), 4096)
    b = full_scores("rank-reorder", resolve_params("rank-reorder", {"seed": "4"}), 4096)
    # The baseline rescales each neuron's row: values change, a row's order does not.
    assert relative_difference(b, a) > 1e-3
    np.testing.assert_array_equal(np.argsort(-a, axis=1, kind="stable"), np.argsort(-b, axis=1, kind="stable"))


# ---------------------------------------------------------------------------
# resolve_params
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SoftWPMI", "pmi", "", "cosine"])
def test_resolve_params_rejects_unknown_similarity(name):
    with pytest.raises(UsageError, match="unknown similarity"):
        resolve_params(name)


def test_score_layer_rejects_unknown_similarity():
    q, I, T = tensors()
    with pytest.raises(UsageError):
        score_layer("softpmi", q, I, T, {})


@pytest.mark.parametrize(
    "name,key",
    [("softwpmi", "topk"), ("softwpmi", "seed"), ("wpmi", "p_start"), ("cos", "a"), ("cos-cubed", "p"), ("rank-reorder", "top_k")],
)
def test_resolve_params_rejects_unknown_parameter(name, key):
    with pytest.raises(UsageError, match=key):
        resolve_params(name, {key: "1"})


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("softwpmi", "top_k", "0"),
        ("softwpmi", "top_k", "-5"),
        ("softwpmi", "top_k", "2.5"),
        ("softwpmi", "top_k", "ten"),
        ("softwpmi", "a", "x"),
        ("softwpmi", "lam", ""),
        ("wpmi", "top_k", "0"),
        ("rank-reorder", "top_fraction", "0"),
        ("rank-reorder", "top_fraction", "1.5"),
        ("rank-reorder", "top_fraction", "-0.1"),
        ("rank-reorder", "top_fraction", "nan"),
        ("rank-reorder", "n_perm", "0"),
        ("rank-reorder", "seed", "zero"),
        ("cos-cubed", "min_norm", "abc"),
    ],
)
def test_resolve_params_rejects_bad_values(name, key, value):
    with pytest.raises(UsageError):
        resolve_params(name, {key: value})


# Values that parse as numbers but make scores NaN, so that labels become arbitrary
# (the NaN candidates sort last and the label is whichever concept is left): a NaN or
# infinite hyperparameter, a membership weight above 1 (log of a negative number), a
# negative floor inside the log, a zero norm floor (0/0 on a constant neuron).
NAN_MAKING = [
    ("softwpmi", "a", "nan"),
    ("softwpmi", "lam", "inf"),
    ("softwpmi", "p_start", "2"),
    ("softwpmi", "min_prob", "-1"),
    ("wpmi", "a", "nan"),
    ("rank-reorder", "p", "nan"),
    ("rank-reorder", "scale_p", "nan"),
    ("cos-cubed", "min_norm", "0"),
]


@pytest.mark.parametrize("name,key,value", NAN_MAKING)
def test_resolve_params_rejects_values_that_make_scores_nan(name, key, value):
    try:
        params = resolve_params(name, {key: value})
    except UsageError:
        return
    q, I, T = tensors()
    q = q[:, :4].clone()
    q[:, 3] = 0.0  # a dead neuron
    scores = score_layer(name, q, I, T, params, full=True)
    n_bad = int((~torch.isfinite(scores)).sum())
    pytest.fail(f"resolve_params accepted {key}={value} for {name}; it makes {n_bad} of {scores.numel()} scores non-finite")


def test_resolve_params_does_not_mutate_defaults():
    resolve_params("softwpmi", {"top_k": "7"})
    assert resolve_params("softwpmi")["top_k"] == 100


# ---------------------------------------------------------------------------
# Float64 accumulation: scores depend on a concept, not on its position
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("passes", ["one", "two"])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", SIMILARITIES)
def test_scores_do_not_depend_on_concept_order(name, chunk, passes):
    if passes == "one" and name not in PMI:
        pytest.skip("one product pass: SoftWPMI and WPMI only")
    _, _, T, _ = planted()
    perm = np.random.default_rng(5).permutation(N_CONCEPTS)
    params = resolve_params(name)
    base = full_scores(name, params, chunk, passes=passes)
    shuffled = full_scores(name, params, chunk, T=T[perm], passes=passes)
    np.testing.assert_allclose(shuffled, base[:, perm], rtol=1e-9, atol=1e-12 * np.abs(base).max())


@pytest.mark.parametrize("name", SIMILARITIES)
def test_scores_do_not_depend_on_chunk_size(name):
    params = resolve_params(name)
    whole = full_scores(name, params, 4096, passes="two")
    for chunk in (3, 39):
        np.testing.assert_allclose(
            full_scores(name, params, chunk, passes="two"), whole, rtol=1e-9, atol=1e-12 * np.abs(whole).max(), err_msg=f"chunk={chunk}"
        )


@pytest.mark.parametrize("name", PMI)
def test_one_and_two_product_passes_agree_whatever_the_row_block(name):
    """The single pass adds each neuron's float32 terms in image order, row block after row block."""
    from dissect.similarity import example_rows, pmi_single_pass, population_correction, softwpmi_weights, top_images

    params = resolve_params(name)
    two = full_scores(name, params, 7, passes="two")
    q, I, T = tensors()
    rows, idx = example_rows(top_images(q, params["top_k"]), I.shape[0])
    w = softwpmi_weights(params["top_k"], params["p_start"], params["p_end"]) if name == "softwpmi" else None
    fracs = []
    for row_block in (1, 7, 64, I.shape[0]):
        score = pmi_single_pass(I, T, params["a"], idx, rows, w, params["min_prob"], row_block, progress=fracs.append)
        one = population_correction(score, params["lam"]).numpy()
        np.testing.assert_allclose(one, two, rtol=1e-9, atol=1e-12 * np.abs(two).max(), err_msg=f"row_block={row_block}")
    assert math.isclose(sum(fracs), 4.0)


@pytest.mark.parametrize("name", PMI)
def test_auto_takes_one_pass_only_when_its_accumulator_fits(name):
    from dissect.budget import rows_per_single_pass
    from dissect.similarity import ROW_TILE

    assert rows_per_single_pass(256 << 20, 50_000, 512, 20_000, ROW_TILE) > 0        # 82 MB accumulator
    assert rows_per_single_pass(256 << 20, 50_000, 2048, 20_000, ROW_TILE) == 0      # 328 MB accumulator
    assert rows_per_single_pass(1 << 30, 50_000, 2048, 20_000, ROW_TILE) > 0
    q, I, T = tensors()
    params = resolve_params(name)
    # A budget too small for the accumulator still gives the same scores (two passes).
    small = score_layer(name, q, I, T, params, full=True, max_memory=1)
    np.testing.assert_allclose(small.numpy(), full_scores(name, params, None, passes="one"), rtol=1e-9)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", SIMILARITIES)
def test_duplicate_concepts_score_equally(name, chunk):
    _, _, T, _ = planted()
    dup = np.concatenate([T, T[[3, 3, 10]]])  # concepts 40, 41, 42 repeat concepts 3, 3, 10
    got = full_scores(name, resolve_params(name), chunk, T=dup)
    np.testing.assert_allclose(got[:, [40, 41, 42]], got[:, [3, 3, 10]], rtol=1e-9, atol=1e-12 * np.abs(got).max())


@pytest.mark.parametrize("name", SIMILARITIES)
def test_constant_neuron_scores_are_finite(name):
    q, I, T = tensors()
    q = q[:, :3].clone()
    q[:, 1] = 0.0  # a dead ReLU unit
    q[:, 2] = 2.5  # a saturated one
    assert torch.isfinite(score_layer(name, q, I, T, resolve_params(name), full=True)).all()


def test_saturated_ties_go_to_the_neurons_own_best_concept_whatever_the_concept_order():
    """With few neurons, every concept one neuron dominates scores exactly λ·log C.

    Among such tied concepts the label must be the one the neuron's top images match
    best (highest raw score_k(m)), not whichever comes first in the concept list.
    """
    import torch

    from dissect.similarity import resolve_params, softwpmi
    from dissect.scoring import TIE_TOLERANCE, score_layer

    g = torch.Generator().manual_seed(3)
    N, d, M = 400, 24, 30
    T = torch.nn.functional.normalize(torch.randn(M, d, generator=g), dim=1)
    I = torch.nn.functional.normalize(torch.randn(N, d, generator=g) * 0.3 + 3 * T[torch.arange(N) % 2], dim=1)
    P = I @ T.T
    q = torch.stack([P[:, 0] * 50, P[:, 1] * 50], dim=1)  # two neurons, each tuned to one concept
    params = resolve_params("softwpmi", {"top_k": 100})
    sim, score = softwpmi(q, I.double(), T.double(), **params, return_score=True)
    tied = [(sim[k] >= sim[k].max() - TIE_TOLERANCE).nonzero().flatten().tolist() for k in range(2)]
    assert max(len(t) for t in tied) > 1, "the setup must produce real ties"
    expected = [max(t, key=lambda m: score[k, m].item()) for k, t in enumerate(tied)]
    labels = score_layer("softwpmi", q, I, T, params, top=3).indices[:, 0].tolist()
    assert labels == expected == [0, 1]
    for seed in range(3):
        perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed))
        relabels = score_layer("softwpmi", q, I, T[perm], params, top=3, chunk=7).indices[:, 0]
        assert perm[relabels].tolist() == expected


def test_top_images_break_ties_by_lower_image_index():
    import torch

    from dissect.similarity import top_images

    q = torch.tensor([[1.0, 5.0], [3.0, 0.0], [3.0, 0.0], [2.0, 0.0], [3.0, 7.0], [0.0, 0.0]])
    assert top_images(q, 3).T.tolist() == [[1, 2, 4], [4, 0, 1]]
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 4, (200, 9), generator=g).float()  # heavy ties
    q[:, :3] = torch.randn(200, 3, generator=g)              # no ties
    expected = torch.sort(q, dim=0, descending=True, stable=True).indices[:20]
    assert torch.equal(top_images(q, 20, block=4), expected)


@pytest.mark.parametrize("quantize", [True, False])
def test_top_k_merge_preselection_ranks_like_a_full_sort(quantize):
    """Wide rows go through a top-k preselection; it must rank exactly like sorting the whole row."""
    from dissect.scoring import TIE_TOLERANCE, _topk_stable

    g = torch.Generator().manual_seed(0)
    C, W, k = 16, 2000, 5
    # Few distinct values (many exact ties), near-ties within the tolerance, ties in the tie-breaker too.
    values = torch.randint(0, 40, (C, W), generator=g).to(torch.float64) * 0.1
    values += torch.randint(0, 2, (C, W), generator=g).to(torch.float64) * TIE_TOLERANCE / 4
    values[0, :] = 1.0                                   # a row that is one big tie
    values[1, 7] = math.nan
    tiebreak = torch.randint(0, 3, (C, W), generator=g).to(torch.float64)
    indices = torch.randperm(W, generator=g).expand(C, W).contiguous()
    got = _topk_stable(values, tiebreak, indices, k, quantize=quantize)
    for row in range(C):
        v = torch.nan_to_num(values[row], nan=-math.inf).tolist()
        bucket = [(-math.inf if math.isinf(x) else round(x / TIE_TOLERANCE)) for x in v]
        key = (lambda j: (-bucket[j], -tiebreak[row, j].item(), indices[row, j].item())) if quantize \
            else (lambda j: (-v[j], -tiebreak[row, j].item(), indices[row, j].item()))
        assert got[row].tolist() == sorted(range(W), key=key)[:k], f"row {row}"


@pytest.mark.parametrize("n_images,k,c,spread", [(10, 3, 7, 1), (300, 5, 1000, 30), (5000, 20, 3000, 500), (50, 4, 9, 50)])
def test_example_rows_equal_torch_unique(n_images, k, c, spread):
    """example_rows renumbers without torch.unique's sort copies (a 250,000-latent SAE's indices); same result."""
    from dissect.similarity import example_rows

    g = torch.Generator().manual_seed(n_images + k)
    idx = torch.randint(0, spread, (k, c), generator=g)
    rows, renumbered = example_rows(idx, n_images)
    want_rows, want_inverse = torch.unique(idx, return_inverse=True)
    if want_rows.numel() > 0.75 * n_images:
        assert rows is None and torch.equal(renumbered, idx)
    else:
        assert torch.equal(rows, want_rows) and torch.equal(renumbered, want_inverse)
