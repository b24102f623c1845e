"""The evaluation metrics (dissect.evaluate.metrics) against the float64 reference, and the sanity
tests (dissect.evaluate.sanity) against the framework's published synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dissect.evaluate import metrics as M
from dissect.evaluate import sanity as S
from dissect.similarity import SIMILARITIES, from_presence, resolve_params

import reference as R
from reference_metrics import reference_metric


def _cases():
    g = np.random.default_rng(7)
    N = 60
    acts = np.stack([
        g.normal(size=N),                        # continuous
        g.integers(0, 4, size=N).astype(float),  # many ties, also at the top-α cutoff
        np.full(N, 2.5),                         # constant activation
        g.exponential(size=N),
        np.where(g.random(N) < 0.2, g.random(N) + 1, 0.0),  # sparse
        g.normal(size=N),
        g.normal(size=N),
    ], axis=1)
    pres = np.stack([
        g.random(N),                                    # continuous presence
        (g.random(N) < 0.3).astype(float),              # binary
        g.random(N),
        np.round(g.random(N), 1),                       # tied presence values
        np.zeros(N),                                    # absent concept
        np.ones(N),                                     # present everywhere
        (acts[:, 6] > 0.5).astype(float) * 0.9,         # a good explanation
    ], axis=1)
    return torch.from_numpy(acts), torch.from_numpy(pres)


@pytest.mark.parametrize("name", M.METRICS)
@pytest.mark.parametrize("alpha", [0.1, 0.05, 1.0])
def test_every_metric_equals_the_reference_with_ties_constants_and_absent_concepts(name, alpha):
    acts, pres = _cases()
    got = M.metric(name, acts, pres, alpha).numpy()
    want = reference_metric(name, acts, pres, alpha)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), (name, got, want)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-10, atol=1e-12)


def test_float32_input_gives_the_float64_answer():
    acts, pres = _cases()
    for name in M.METRICS:
        a = M.metric(name, acts.float(), pres.float(), 0.1).numpy()
        b = reference_metric(name, acts.float(), pres.float(), 0.1)
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-6, atol=1e-7)


def test_undefined_values_are_nan_not_zero():
    acts, pres = _cases()
    # a constant activation has no correlation; an absent concept has no cosine, precision or correlation
    assert math.isnan(float(M.correlation(acts, pres)[2]))
    assert math.isnan(float(M.correlation(acts, pres)[4]))
    assert math.isnan(float(M.cosine(acts, pres)[4]))
    assert math.isnan(float(M.precision(acts, pres, 0.1)[4]))
    # a constant activation is active everywhere: AUC has no inactive image
    assert math.isnan(float(M.auc(acts, pres, 0.1)[2]))


def test_a_perfect_explanation_scores_one_on_every_reliable_metric():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(1000, 3, generator=g)
    pres = (acts >= torch.topk(acts, 10, dim=0).values[-1:]).double()  # present exactly on the top 1 %
    for name in ("auprc", "f1", "iou", "auc", "recall", "precision"):
        np.testing.assert_allclose(M.metric(name, acts, pres, 0.01).numpy(), 1.0)
    assert (M.correlation(acts, pres) > 0.1).all()  # a uniform unit vs its top 1 %: r ≈ 0.17


# ---------------------------------------------------------------------------
# Sanity tests: the framework's synthetic setting (theoretical_sanity_check.ipynb)
# ---------------------------------------------------------------------------

#: Published mean normalised score changes (500,000 inputs, 1,000 seeds) for γ = 0.499, 0.1, 0.01.
PUBLISHED = {
    ("correlation", "missing"): (-0.2111, -0.1559, -0.1474), ("correlation", "extra"): (-0.4776, -0.1667, -0.1482),
    ("cosine", "missing"): (-0.1465, -0.1464, -0.1464), ("cosine", "extra"): (-0.1464, -0.1464, -0.1465),
    ("auprc", "missing"): (-0.2505, -0.4500, -0.4953), ("auprc", "extra"): (-0.5000, -0.5000, -0.5000),
    ("f1", "missing"): (-0.3333, -0.3333, -0.3332), ("f1", "extra"): (-0.3333, -0.3333, -0.3334),
    ("iou", "missing"): (-0.5000, -0.5001, -0.5000), ("iou", "extra"): (-0.5000, -0.5000, -0.4999),
    ("auc", "missing"): (-0.2500, -0.2500, -0.2501), ("auc", "extra"): (-0.7562, -0.0844, -0.0077),
    ("recall", "missing"): (-0.5000, -0.5000, -0.5000), ("recall", "extra"): (0.0, 0.0, 0.0),
    ("precision", "missing"): (0.0, 0.0, 0.0), ("precision", "extra"): (-0.5000, -0.5000, -0.4999),
}
#: Published verdicts: (passes missing, passes extra).
VERDICT = {"correlation": (True, True), "cosine": (True, True), "auprc": (True, True), "f1": (True, True),
           "iou": (True, True), "recall": (True, False), "precision": (False, True), "auc": (True, False)}


@pytest.fixture(scope="module")
def synthetic_results():
    return {m: S.synthetic(S.Scorer(m, "metric"), n_inputs=50_000, repetitions=20, seed=1) for m in M.METRICS}


@pytest.mark.parametrize("name", M.METRICS)
def test_the_published_sanity_verdicts_are_reproduced(synthetic_results, name):
    res = synthetic_results[name]
    assert (res.passes("missing"), res.passes("extra")) == VERDICT[name]
    assert name in M.RELIABLE or not (res.passes("missing") and res.passes("extra"))


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_the_published_mean_score_changes_are_reproduced(synthetic_results, key):
    name, test = key
    got = synthetic_results[name].mean_diff[test][:3]
    # AUC's extra-labels change is not 0.7562 in our form: the reference breaks presence
    # ties at random (a tiny noise), we count a tie one half; the verdict is the same.
    if key == ("auc", "extra"):
        np.testing.assert_allclose(got[1:], PUBLISHED[key][1:], atol=0.03)
        return
    np.testing.assert_allclose(got, PUBLISHED[key], atol=0.01)


def test_the_sanity_tests_are_deterministic_in_their_seed():
    a = S.synthetic(S.Scorer("correlation", "metric"), n_inputs=5000, repetitions=5, seed=3)
    b = S.synthetic(S.Scorer("correlation", "metric"), n_inputs=5000, repetitions=5, seed=3)
    c = S.synthetic(S.Scorer("correlation", "metric"), n_inputs=5000, repetitions=5, seed=4)
    np.testing.assert_equal(a.mean_diff, b.mean_diff)
    assert a.mean_diff["missing"] != c.mean_diff["missing"]


def test_the_perturbations_do_what_the_framework_says():
    g = torch.Generator().manual_seed(0)
    c = torch.zeros(200_000, 1)
    c[:20_000] = 1
    miss = S.missing_labels(c, g)
    extra = S.extra_labels(c, g)
    assert (miss <= c).all() and abs(float(miss.sum()) / 20_000 - 0.5) < 0.02
    assert (extra >= c).all() and abs(float(extra.sum()) / 20_000 - 2.0) < 0.03


# ---------------------------------------------------------------------------
# dissect's similarity functions on a presence matrix
# ---------------------------------------------------------------------------

def _pmi_reference(q, p, *, lam, top_k, min_prob, weights):
    N, C = q.shape
    M_ = p.shape[1]
    scores = np.zeros((C, M_))
    for k in range(C):
        top = R.top_images_stable(q[:, k], top_k)
        for m in range(M_):
            scores[k, m] = sum(math.log(1.0 + w * (p[i, m] - 1.0) + min_prob) for w, i in zip(weights, top))
    return R.population_correction(scores, lam)


@pytest.mark.parametrize("name", SIMILARITIES)
def test_similarity_on_a_presence_matrix_equals_the_reference(name):
    g = np.random.default_rng(3)
    q = g.normal(size=(120, 5))
    pres = (g.random((120, 6)) < 0.3).astype(float) * 0.8 + 0.1 * g.random((120, 6))
    params = resolve_params(name, {"top_k": 20} if name in ("softwpmi", "wpmi") else None)
    got = from_presence(name, torch.from_numpy(q), torch.from_numpy(pres), params).numpy()
    if name in ("softwpmi", "wpmi"):
        k = params["top_k"]
        w = ([params["p_start"] - r / k * (params["p_start"] - params["p_end"]) for r in range(k)]
             if name == "softwpmi" else [1.0] * k)
        want = _pmi_reference(q, pres, lam=params["lam"], top_k=k, min_prob=params["min_prob"], weights=w)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # float32 terms, float64 sums
    else:
        fn = R._FUNCTIONS[name]
        want = fn(q, pres, **params)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_every_similarity_function_goes_through_the_sanity_tests():
    results = {s.name: S.synthetic(s, n_inputs=100_000, repetitions=3, seed=0) for s in S.scorers() if s.kind == "similarity"}
    assert set(results) == set(SIMILARITIES)
    for r in results.values():
        assert len(r.rates["missing"]) == len(S.FREQUENCIES)
        assert all(0.0 <= x <= 1.0 for x in r.rates["missing"] + r.rates["extra"])
    # cos is a cosine: it passes both, like the framework's cosine
    assert results["cos"].passes("missing") and results["cos"].passes("extra")


def test_shared_explanations_give_the_same_scores_as_one_column_per_unit():
    g = torch.Generator().manual_seed(2)
    acts = torch.rand(500, 6, generator=g)
    distinct = torch.rand(500, 3, generator=g).round(decimals=1)
    index = torch.tensor([2, 0, 0, 1, 2, 2])
    a = M.score_all(acts, distinct, 0.05, index=index)
    b = M.score_all(acts, distinct[:, index], 0.05)
    for m in M.METRICS:
        torch.testing.assert_close(a[m], b[m], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(2))
def test_the_sparse_ranking_of_active_images_equals_the_full_one(seed):
    g = torch.Generator().manual_seed(seed)
    n = 1600
    acts = torch.randn(n, 9, generator=g)
    acts[:, 3] = torch.relu(acts[:, 3] - 2.5)        # mostly zero: many ties at the cutoff -> full path
    acts[:, 4] = acts[:, 4].round(decimals=1)         # ties at the cutoff, few
    distinct = torch.rand(n, 4, generator=g, dtype=torch.float64)
    distinct[:, 1] = distinct[:, 1].round(decimals=1)  # tied presence
    distinct[:, 2] = (distinct[:, 2] < 0.1).double()   # binary presence
    index = torch.tensor([0, 1, 2, 3, 1, 2, 0, 3, 3])
    sparse_units = torch.tensor([0, 1, 2, 4, 5, 6, 7, 8])
    for units, sparse in ((sparse_units, True), (torch.arange(9), False)):
        a, idx = acts[:, units], index[units]
        act = M.active(a, 0.02)
        assert (M._ranked_sparse(a, act, distinct[:, idx], distinct, idx, 0.02) is not None) == sparse
        got = M.score_all(a, distinct, 0.02, ("auprc", "auc"), index=idx)
        for m in ("auprc", "auc"):
            want = reference_metric(m, a, distinct[:, idx], 0.02)
            np.testing.assert_allclose(got[m].numpy(), want, rtol=1e-10, atol=1e-12)
