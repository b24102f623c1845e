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
from reference_metrics import active as R_active
from reference_metrics import pearson as R_pearson
from reference_metrics import reference_metric
from reference_metrics import spearman as R_spearman


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


DETERMINISTIC = [m for m in M.METRICS if m not in M.SAMPLED]
#: Ranked with ties broken at random under the reference conventions.
RANDOM_TIES = ("auc", "inverse-auc", "spearman-correlation")


def _assert_same(got, want, rtol=1e-10, atol=1e-12):
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    assert np.array_equal(np.isinf(got), np.isinf(want)), (got, want)
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])


def test_the_eighteen_metrics_of_the_framework_are_offered():
    assert len(M.METRICS) == 18 == len(set(M.METRICS))
    assert {"balanced-accuracy", "inverse-auc", "spearman-correlation-top-and-random", "mad", "wpmi"} <= set(M.METRICS)


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("alpha", [0.1, 0.05, 1.0])
def test_every_metric_equals_the_reference_with_ties_constants_and_absent_concepts(name, alpha):
    acts, pres = _cases()
    _assert_same(M.metric(name, acts, pres, alpha).numpy(), reference_metric(name, acts, pres, alpha))


@pytest.mark.parametrize("name", [m for m in DETERMINISTIC if m not in RANDOM_TIES])
@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_the_reference_conventions_give_the_reference_codes_values(name, alpha):
    """0 (or +inf) where dissect says NaN, r (N-1)/N for correlation: Neuron_Eval's metrics.py."""
    acts, pres = _cases()
    got = M.metric(name, acts, pres, alpha, M.Options("neuron-eval")).numpy()
    _assert_same(got, reference_metric(name, acts, pres, alpha, reference=True))


def test_the_conventions_differ_only_where_the_framework_clamps():
    acts, pres = _cases()
    ours = M.metric("precision", acts, pres, 0.1).numpy()
    ref = M.metric("precision", acts, pres, 0.1, M.Options("neuron-eval")).numpy()
    assert math.isnan(ours[4]) and ref[4] == 0.0          # an absent concept
    assert math.isinf(float(M.metric("wpmi", acts, pres, 0.1, M.Options("neuron-eval"))[4]))
    assert math.isnan(float(M.metric("wpmi", acts, pres, 0.1)[4]))
    with pytest.raises(ValueError, match="conventions"):
        M.Options("sklearn")


@pytest.mark.parametrize("name", RANDOM_TIES)
def test_random_tie_breaking_equals_the_reference_without_ties(name):
    g = np.random.default_rng(11)
    acts = torch.from_numpy(g.normal(size=(80, 4)))
    pres = torch.from_numpy(g.random((80, 4)))                      # continuous: no ties
    want = reference_metric(name, acts, pres, 0.1, reference=True)
    _assert_same(M.metric(name, acts, pres, 0.1, M.Options("neuron-eval")).numpy(), want)


def test_reference_ranks_are_the_reference_codes_noisy_float32_argsort():
    """Neuron_Eval's _get_ranks: argsort(argsort(x + 1e-7 * rand)) in float32. Ties near 0 are broken at
    random; at 2.0 the noise is below float32's spacing (2.4e-7) and they keep their order."""
    x = torch.tensor([[2.0], [1.0], [2.0], [0.0], [2.0], [1.0], [0.0], [0.0]])
    g, replay = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    last_of_zeros = []
    for _ in range(600):
        got = M.ranks(x, g)[:, 0].numpy()
        u = torch.rand(x.shape, generator=replay, dtype=torch.float32).numpy()[:, 0]
        noisy = x.numpy()[:, 0].astype(np.float32) + np.float32(1e-7) * u
        want = np.argsort(np.argsort(noisy, kind="stable"), kind="stable")
        np.testing.assert_array_equal(got, want)
        assert set(got[[3, 6, 7]]) == {0, 1, 2} and list(got[[0, 2, 4]]) == [5, 6, 7]
        last_of_zeros.append(int(np.argmax(got[[3, 6, 7]])))
    assert np.bincount(last_of_zeros, minlength=3).min() > 150     # ties at 0: each order about equally often
    np.testing.assert_allclose(M.ranks(x)[:, 0].numpy(), [6, 3.5, 6, 1, 6, 3.5, 1, 1])   # mid-ranks


def test_reference_auc_counts_pairs_in_the_reference_codes_noisy_order():
    """With ties, the reference conventions' AUC is the share of (active, inactive) pairs in which the active image
    comes later in the reference's order: presence + 1e-7 noise in float32, remaining ties by position."""
    acts, pres = _cases()
    got = M.metric("auc", acts, pres, 0.1, M.Options("neuron-eval", generator=torch.Generator().manual_seed(1)))
    u = torch.rand(pres.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32).numpy()
    noisy = pres.numpy().astype(np.float32) + np.float32(1e-7) * u
    for j in range(acts.shape[1]):
        act = np.array(R_active(acts[:, j].tolist(), 0.1))
        pos, neg = np.flatnonzero(act), np.flatnonzero(~act)
        if not len(neg):
            assert float(got[j]) == 0.0       # the reference's clamped denominator
            continue
        later = sum(1 for p in pos for q in neg if noisy[p, j] > noisy[q, j] or (noisy[p, j] == noisy[q, j] and p > q))
        assert abs(float(got[j]) - later / (len(pos) * len(neg))) < 1e-12


@pytest.mark.parametrize("name", M.SAMPLED)
@pytest.mark.parametrize("alpha", [0.1, None])
@pytest.mark.parametrize("conventions", M.CONVENTIONS)
def test_top_and_random_metrics_are_the_correlation_on_the_frameworks_sample(name, alpha, conventions):
    g = np.random.default_rng(5)
    n = 3000
    acts = torch.from_numpy(g.normal(size=(n, 3)))
    if alpha is None:
        acts = (acts > 1.0).double()                                 # binary activations: the synthetic setting
    pres = torch.from_numpy((g.random((n, 3)) < 0.2) * 0.7 + 0.2 * g.random((n, 3)))
    got = M.metric(name, acts, pres, alpha, M.Options(conventions, generator=torch.Generator().manual_seed(9)))
    replay = M.Options(conventions, generator=torch.Generator().manual_seed(9))
    k = M.TOP_AND_RANDOM_K
    for u in range(3):
        ids = M._top_and_random_ids(acts[:, u], alpha, replay, replay.rng()).tolist()
        a, c = acts[:, u].tolist(), pres[:, u].tolist()
        if alpha is None:
            top = {i for i in range(n) if a[i] == 1.0}
            n_top = len(top) if conventions == "neuron-eval" else k   # the reference takes every active input
        else:
            top = set(np.argsort(-np.array(a), kind="stable")[: math.ceil(M.TOP_AND_RANDOM_ALPHA * n)].tolist())
            n_top = min(k, len(top))
        assert len(ids) == n_top + k and set(ids[:n_top]) <= top and len(set(ids[:n_top])) == n_top
        assert len(set(ids[n_top:])) == k
        x, y = [a[i] for i in ids], [c[i] for i in ids]
        fn = R_spearman if name.startswith("spearman") else R_pearson
        if name.startswith("spearman") and conventions == "neuron-eval":
            continue   # random tie order of the sample's ranks: checked through ranks() above
        want = fn(x, y, conventions == "neuron-eval")
        assert abs(float(got[u]) - want) < 1e-10 or (math.isnan(want) and math.isnan(float(got[u])))


def test_float32_input_gives_the_float64_answer():
    acts, pres = _cases()
    for name in DETERMINISTIC:
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

#: Published mean normalised score changes (500,000 inputs, 1,000 seeds) for γ = 0.499, 0.1, 0.01
#: (Neuron_Eval theoretical_sanity_check.ipynb; the top-and-random ones are its ``*_binary`` functions).
PUBLISHED = {
    ("correlation", "missing"): (-0.2111, -0.1559, -0.1474), ("correlation", "extra"): (-0.4776, -0.1667, -0.1482),
    ("cosine", "missing"): (-0.1465, -0.1464, -0.1464), ("cosine", "extra"): (-0.1464, -0.1464, -0.1465),
    ("auprc", "missing"): (-0.2505, -0.4500, -0.4953), ("auprc", "extra"): (-0.5000, -0.5000, -0.5000),
    ("f1", "missing"): (-0.3333, -0.3333, -0.3332), ("f1", "extra"): (-0.3333, -0.3333, -0.3334),
    ("iou", "missing"): (-0.5000, -0.5001, -0.5000), ("iou", "extra"): (-0.5000, -0.5000, -0.4999),
    ("auc", "missing"): (-0.2500, -0.2500, -0.2501), ("auc", "extra"): (-0.7562, -0.0844, -0.0077),
    ("recall", "missing"): (-0.5000, -0.5000, -0.5000), ("recall", "extra"): (0.0, 0.0, 0.0),
    ("precision", "missing"): (0.0, 0.0, 0.0), ("precision", "extra"): (-0.5000, -0.5000, -0.4999),
    ("accuracy", "missing"): (-0.2495, -0.0500, -0.0050), ("accuracy", "extra"): (-0.4990, -0.1000, -0.0100),
    ("balanced-accuracy", "missing"): (-0.2500, -0.2500, -0.2501),
    ("balanced-accuracy", "extra"): (-0.4980, -0.0556, -0.0050),
    ("inverse-balanced-accuracy", "missing"): (-0.1662, -0.0263, -0.0025),
    ("inverse-balanced-accuracy", "extra"): (-0.2500, -0.2500, -0.2500),
    ("inverse-auc", "missing"): (-0.1662, -0.0263, -0.0025), ("inverse-auc", "extra"): (-0.2498, -0.2500, -0.2500),
    ("inverse-auprc", "missing"): (-0.5000, -0.5001, -0.4996), ("inverse-auprc", "extra"): (-0.0010, -0.4000, -0.4898),
    ("spearman-correlation", "missing"): (-0.2000, -0.0676, -0.0079),
    ("spearman-correlation", "extra"): (-0.5671, -0.0228, -0.0007),
    ("correlation-top-and-random", "missing"): (-0.4965, -0.4894, -0.4649),
    ("correlation-top-and-random", "extra"): (-0.4926, -0.0289, -0.0024),
    ("spearman-correlation-top-and-random", "missing"): (-0.1020, -0.0996, -0.1099),
    ("spearman-correlation-top-and-random", "extra"): (-0.0012, 0.0013, -0.0067),
    ("wpmi", "missing"): (-0.3676, -0.3675, -0.3678), ("wpmi", "extra"): (-0.0299, -0.0299, -0.0299),
    ("mad", "missing"): (-0.3325, -0.0526, -0.0050), ("mad", "extra"): (-0.5000, -0.5000, -0.5002),
}
#: Published verdicts (passes missing, passes extra): a decrease in at least 90% of the draws at every γ.
VERDICT = {"correlation": (True, True), "cosine": (True, True), "auprc": (True, True), "f1": (True, True),
           "iou": (True, True), "recall": (True, False), "precision": (False, True), "auc": (True, False),
           "accuracy": (False, False), "balanced-accuracy": (True, False), "inverse-balanced-accuracy": (False, True),
           "inverse-auc": (False, True), "inverse-auprc": (True, False), "spearman-correlation": (False, False),
           "correlation-top-and-random": (True, False), "spearman-correlation-top-and-random": (True, False),
           "wpmi": (True, True), "mad": (False, True)}
#: Where dissect's conventions change a verdict: mid-ranks make Spearman on binary data the correlation itself.
DISSECT_VERDICT = {**VERDICT, "spearman-correlation": (True, True)}


def _synthetic(conventions, sampled_inputs=500_000, repetitions=20):
    """50,000 inputs; the published 500,000 for the top-and-random metrics, whose sample of every active input
    plus 25 at random depends on N (under the reference conventions)."""
    return {m: S.synthetic(S.Scorer(m, "metric", {"conventions": conventions}),
                           n_inputs=sampled_inputs if m in M.SAMPLED else 50_000, repetitions=repetitions, seed=1)
            for m in M.METRICS}


@pytest.fixture(scope="module")
def synthetic_results():
    return _synthetic("neuron-eval")


@pytest.mark.parametrize("name", M.METRICS)
def test_the_published_sanity_verdicts_are_reproduced(synthetic_results, name):
    res = synthetic_results[name]
    assert (res.passes("missing"), res.passes("extra")) == VERDICT[name]
    assert name in M.RELIABLE or name == "wpmi" or not (res.passes("missing") and res.passes("extra"))


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_the_published_mean_score_changes_are_reproduced(synthetic_results, key):
    """Under the reference conventions every mean change of the notebook, to 0.01 (the sampled ones, 20 draws of
    a random sample here against 1,000 there: 0.03)."""
    name, test = key
    got = synthetic_results[name].mean_diff[test][:3]
    np.testing.assert_allclose(got, PUBLISHED[key], atol=0.03 if name in M.SAMPLED else 0.01)


def test_dissects_conventions_keep_every_verdict_but_spearmans():
    results = _synthetic("dissect", sampled_inputs=50_000, repetitions=10)
    got = {m: (r.passes("missing"), r.passes("extra")) for m, r in results.items()}
    assert got == DISSECT_VERDICT
    # with mid-ranks, Spearman of binary vectors is their correlation
    np.testing.assert_allclose(results["spearman-correlation"].mean_diff["missing"],
                               results["correlation"].mean_diff["missing"], atol=1e-9)


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


def test_softwpmi_is_not_degenerate_in_the_synthetic_setting_it_is_tested_in():
    """On the framework's binary activations every unit's top inputs are the same tied first inputs, so SoftWPMI's
    λ log p(t) cancels its score exactly: 0 for every unit and concept. The similarity functions are tested on the
    indicator plus a small noise, where each unit ranks its own active inputs first."""
    from dissect.similarity import resolve_params

    binary, c, _ = S.synthetic_setting(20_000)
    noisy, _, _ = S.synthetic_setting(20_000, noise=S.SYNTHETIC_NOISE)
    assert ((noisy >= 0.5) == (c >= 0.5)).all() and all(noisy[:, j].unique().numel() == noisy.shape[0] for j in range(5))
    params = resolve_params("softwpmi", None)
    assert from_presence("softwpmi", binary, c, params).abs().max() == 0          # the degenerate setting
    sim = from_presence("softwpmi", noisy, c, params)
    assert (sim.diagonal() > 0.1).all() and (sim.diagonal()[:, None] > sim).sum() == 20  # own concept first
    res = S.synthetic(S.Scorer("softwpmi", "similarity", {}), n_inputs=20_000, repetitions=5, seed=0)
    assert any(abs(d) > S.EPSILON for d in res.mean_diff["missing"])   # the perturbations now move its score


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


def test_a_final_layers_alpha_is_the_one_that_retrieves_each_units_concept_best():
    """The framework's final-layer procedure: α from its grid, by the AUPRC of all (unit, concept) scores of the
    validation units as a ranking of the right pairs."""
    g = torch.Generator().manual_seed(3)
    n, units = 2000, 30
    pres = torch.zeros(n, units)
    for j in range(units):
        pres[10 + torch.randperm(n - 10, generator=g)[:20], j] = 1       # each concept on 1% of the images
    acts = pres + 0.3 * torch.rand(n, units, generator=g)                 # each unit fires on its concept ...
    acts[:10] = 2.0                                                       # ... and most on 10 images with none
    right = torch.arange(units)
    choice = S.best_alpha(S.Scorer("f1", "metric"), acts, pres, right)
    # α ≤ 0.005 sees only the 10 shared images (every concept scores 0); 0.01 is the first that separates
    assert choice.alpha == 0.01 and choice.auprc == pytest.approx(1.0) and choice.lam is None
    low = S.retrieval_auprc(M.pairwise("f1", acts, pres, 0.005), right)
    assert low < 0.2
    wpmi = S.best_alpha(S.Scorer("wpmi", "metric"), acts, pres, right)
    assert wpmi.lam in S.LAMBDA_GRID and wpmi.auprc == pytest.approx(1.0)
    # the score it maximises, against the float64 reference: one right pair per unit, ranked among all pairs
    sim = torch.rand(4, 3, generator=g, dtype=torch.float64)
    right4 = torch.tensor([0, 2, 2, 1])
    target = np.zeros((4, 3))
    target[np.arange(4), right4.numpy()] = 1
    want = reference_metric("auprc", target.reshape(-1, 1), sim.numpy().reshape(-1, 1), None)[0]
    assert S.retrieval_auprc(sim, right4) == pytest.approx(want, abs=1e-12)
    val, test = S.validation_split(100, seed=0)
    assert len(val) == 5 and len(test) == 95 and not set(val.tolist()) & set(test.tolist())
    assert torch.equal(S.validation_split(100, seed=0)[0], val) and not torch.equal(S.validation_split(100, seed=1)[0], val)


def test_alphas_the_validation_units_cannot_tell_apart_keep_the_default():
    """One validation unit that ranks its concept first at every α: the reference keeps the first (α 0.0001, one
    image of 2,000); dissect the one nearest its default 0.005."""
    g = torch.Generator().manual_seed(4)
    pres = (torch.rand(2000, 3, generator=g) < 0.1).float()
    acts = pres[:, :1] * 5 + torch.rand(2000, 1, generator=g)
    right = torch.tensor([0])
    ours = S.best_alpha(S.Scorer("f1", "metric"), acts, pres, right)
    ref = S.best_alpha(S.Scorer("f1", "metric", {"conventions": "neuron-eval"}), acts, pres, right)
    assert ours.auprc == ref.auprc == 1.0
    assert ours.alpha == M.DEFAULT_ALPHA and ref.alpha == S.ALPHA_GRID[0]
