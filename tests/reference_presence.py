"""A slow float64 reference of the label-free presence estimates (``--calibration mixture`` and ``fdr``).

Written from the definitions in ``docs/guide/simulate.md`` ("How CLIP presence is estimated") and
``dissect.evaluate.mixture``'s docstrings, independently of that module: numpy and plain Python, one
concept at a time, densities from ``math.lgamma``, the Student-t(4) tail from its textbook closed form, the
normal's from ``math.erfc``. For a few thousand images.

    cos  [N]  one concept's cosine with each of the N probe images
"""

from __future__ import annotations

import math

import numpy as np

#: The null families, as Student-t degrees of freedom (inf: the normal).
FAMILIES = {"t4": 4.0, "normal": math.inf}


def robust_z(cos: np.ndarray) -> np.ndarray:
    cos = np.asarray(cos, dtype=np.float64)
    med = float(np.median(cos))
    scale = max(1.4826 * float(np.median(np.abs(cos - med))), 1e-12)
    return (cos - med) / scale


def upper_p(z: float) -> float:
    """P(T >= z) for T ~ Student-t with 4 degrees of freedom: 1 - F(z), F(t) = 1/2 + (3/8) u (1 - t^2 / (12 (1 +
    t^2 / 4))), u = t / sqrt(1 + t^2 / 4) (the textbook closed form for four degrees of freedom)."""
    u = z / math.sqrt(1 + z * z / 4)
    return 1 - (0.5 + 0.375 * u * (1 - z * z / (12 * (1 + z * z / 4))))


def upper_p_df(z: float, df: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2)) if math.isinf(df) else upper_p(z)


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: q_i = min over j with p_j >= p_i of min(1, N p_j / #{k: p_k <= p_j})."""
    n = len(p)
    rank = np.array([np.sum(p <= pj) for pj in p])        # each p-value's rank, ties at their largest
    adjusted = n * p / rank
    return np.array([min(1.0, adjusted[p >= pi].min()) for pi in p])


def tail_presence(cos: np.ndarray, df: float = 4.0) -> np.ndarray:
    z = robust_z(cos)
    return 1.0 - bh_q(np.array([upper_p_df(v, df) for v in z]))


def t_logpdf(x: float, mu: float, s: float, df: float) -> float:
    if math.isinf(df):
        return normal_logpdf(x, mu, s)
    u = (x - mu) / s
    return (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(s)
            - (df + 1) / 2 * math.log(1 + u * u / df))


def normal_logpdf(x: float, mu: float, s: float) -> float:
    u = (x - mu) / s
    return -0.5 * u * u - math.log(s) - 0.5 * math.log(2 * math.pi)


def histogram(z: np.ndarray, bins: int):
    """Equal-width bins from min(z) to max(z): bin b holds the z with floor((z - min) / width) = b (the maximum in the
    last); each bin's mean value (its centre when empty) and count."""
    lo, hi = float(z.min()), float(z.max())
    width = max((hi - lo) / bins, 1e-12)
    values, counts = np.zeros(bins), np.zeros(bins)
    members = [[] for _ in range(bins)]
    for v in z:
        members[min(max(int(math.floor((v - lo) / width)), 0), bins - 1)].append(v)
    for b in range(bins):
        counts[b] = len(members[b])
        values[b] = float(np.mean(members[b])) if members[b] else lo + (b + 0.5) * width
    return values, counts


def t_step(x, w, mu, s, df):
    """One ECM step of a Student-t location and scale for values x with weights w (df inf: the normal's weighted
    mean and standard deviation)."""
    u = np.array([1.0 if math.isinf(df) else (df + 1) / (df + ((v - mu) / s) ** 2) for v in x])
    mu_new = float(np.sum(w * u * x) / np.sum(w * u))
    s_new = max(math.sqrt(float(np.sum(w * u * (x - mu_new) ** 2) / np.sum(w))), 1e-12)
    return mu_new, s_new


def null_loglik(x, w, df, iterations, tolerance):
    mu, s = 0.0, 1.0
    for _ in range(iterations):
        mu_new, s_new = t_step(x, w, mu, s, df)
        done = abs(mu_new - mu) < tolerance and abs(s_new - s) < tolerance
        mu, s = mu_new, s_new
        if done:
            break
    return sum(c * t_logpdf(v, mu, s, df) for v, c in zip(x, w))


def posterior(x, w, pi, mu0, s0, mu1, s1, df):
    r, ll = np.zeros(len(x)), 0.0
    for i, v in enumerate(x):
        a = math.log(1 - pi) + t_logpdf(v, mu0, s0, df)
        b = math.log(pi) + normal_logpdf(v, mu1, s1)
        m = max(a, b)
        total = m + math.log(math.exp(a - m) + math.exp(b - m))
        ll += w[i] * total
        r[i] = 0.0 if v < mu0 else math.exp(b - total)
    return r, ll


def m_step(x, w, r, mu0, s0, df, rule):
    n = float(w.sum())
    w1 = float(np.sum(w * r))
    pi = min(max(w1 / n, 1e-9), 1 - 1e-9)
    mu1 = float(np.sum(w * r * x) / w1)
    s1 = max(math.sqrt(float(np.sum(w * r * (x - mu1) ** 2) / w1)), rule.min_spread)
    mu0, s0 = t_step(x, w * (1 - r), mu0, s0, df)
    return pi, mu0, s0, mu1, s1


def em(x, w, start, df, rule):
    n = float(w.sum())
    top = max(1.0, float(round(start * n)))
    r = np.zeros(len(x))
    above = n
    for b in range(len(x)):                 # bins in increasing order: the images above bin b
        above -= w[b]
        if w[b] > 0:
            r[b] = min(max((top - above) / w[b], 0.0), 1.0)
    w0 = w * (1 - r)
    mu0 = float(np.sum(w0 * x) / np.sum(w0))
    s0 = max(math.sqrt(float(np.sum(w0 * (x - mu0) ** 2) / np.sum(w0))), 1e-12)
    params = m_step(x, w, r, mu0, s0, df, rule)
    r, ll = posterior(x, w, *params, df)
    for _ in range(rule.iterations):
        params = m_step(x, w, r, params[1], params[2], df, rule)
        r, new_ll = posterior(x, w, *params, df)
        settled = abs(new_ll - ll) <= rule.tolerance * abs(new_ll)
        ll = new_ll
        if settled:
            break
    return params, r, ll


def mixture_presence(cos: np.ndarray, rule) -> tuple[np.ndarray, bool]:
    """The presence of one concept on each image, and whether a two-group fit was kept. Every null family of
    ``rule.nulls`` and every start is fitted; a fit is kept when its gain over the best null alone (of any family)
    beats 1.5 ln N and it passes the crispness, separation and share floors; of the kept fits the crispest wins (then
    the larger gain; the first on a full tie). Without one, the tail presence under the family whose null alone
    fits best (the first on a tie)."""
    z = robust_z(cos)
    n = len(z)
    x, w = histogram(z, rule.bins)
    alone = {name: null_loglik(x, w, FAMILIES[name], rule.iterations, rule.tolerance) for name in rule.nulls}
    family = max(rule.nulls, key=lambda name: (alone[name], -rule.nulls.index(name)))
    base = alone[family]
    best, best_key, best_df = None, None, None
    for name in rule.nulls:
        df = FAMILIES[name]
        for start in rule.starts:
            params, r, ll = em(x, w, start, df, rule)
            pi, mu0, s0, mu1, s1 = params
            crisp = 1 - 2 * float(np.sum(w * np.minimum(r, 1 - r))) / max(float(np.sum(w * r)), 1e-300)
            gain = ll - base
            kept = (gain > 1.5 * math.log(n) and crisp >= rule.min_crisp
                    and (mu1 - mu0) / s0 >= rule.min_separation and pi <= rule.max_share + 1 / math.sqrt(n))
            if kept and (best_key is None or (crisp, gain) > best_key):
                best, best_key, best_df = params, (crisp, gain), df
    if best is None:
        return tail_presence(cos, FAMILIES[family]), False
    r, _ = posterior(z, np.ones(n), *best, best_df)    # each image's posterior under the kept fit
    return r, True
