"""Small exact statistics for the detector, written with `math` only (no numpy/scipy).

Everything here is a pure function of counts. Tail probabilities are summed exactly in log space;
the counts involved (ratings of one window over a few days) are at most a few thousand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "BetaPrior",
    "PeerSums",
    "below_order_statistic_pmf",
    "below_order_statistic_sf",
    "benjamini_hochberg",
    "beta_binomial_cdf",
    "beta_binomial_sf",
    "binomial_sf",
    "convolution_sf",
    "fit_beta_prior",
    "fit_beta_prior_sums",
    "funnel_z",
    "funnel_z_sums",
    "hypergeom_pmf",
    "hypergeom_sf",
    "normal_sf",
    "poisson_sf",
    "run_without_event_p",
    "truncated_product_p",
]


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    total = -math.inf
    for i in range(k, n + 1):
        total = _log_add(total, _log_choose(n, i) + i * lp + (n - i) * lq)
    return min(1.0, math.exp(total))


def poisson_sf(k: int, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu)."""
    if k <= 0:
        return 1.0
    if mu <= 0:
        return 0.0
    # 1 - P(X <= k-1), summed in log space; for large k the complement is summed directly.
    log_mu = math.log(mu)
    if k > mu:
        total = -math.inf
        i = k
        while True:
            term = i * log_mu - mu - math.lgamma(i + 1)
            total = _log_add(total, term)
            if i > mu and term < total - 40:
                break
            i += 1
        return min(1.0, math.exp(total))
    cdf = -math.inf
    for i in range(k):
        cdf = _log_add(cdf, i * log_mu - mu - math.lgamma(i + 1))
    return max(0.0, 1.0 - math.exp(cdf))


def _beta_binomial_logpmf(k: int, n: int, a: float, b: float) -> float:
    return _log_choose(n, k) + _log_beta(k + a, n - k + b) - _log_beta(a, b)


def beta_binomial_cdf(k: int, n: int, a: float, b: float) -> float:
    """P(X <= k) for X ~ BetaBinomial(n, a, b)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    total = -math.inf
    for i in range(k + 1):
        total = _log_add(total, _beta_binomial_logpmf(i, n, a, b))
    return min(1.0, math.exp(total))


def beta_binomial_sf(k: int, n: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    total = -math.inf
    for i in range(k, n + 1):
        total = _log_add(total, _beta_binomial_logpmf(i, n, a, b))
    return min(1.0, math.exp(total))


def run_without_event_p(run: int, a: float, b: float) -> float:
    """P(no event in `run` trials) when the event rate p ~ Beta(a, b): E[(1-p)^run]."""
    if run <= 0:
        return 1.0
    return math.exp(_log_beta(a, b + run) - _log_beta(a, b))


class BetaPrior:
    """A Beta(a, b) prior for a rate, fitted to peers; `strength` = a + b in pseudo-observations."""

    __slots__ = ("a", "b")

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def strength(self) -> float:
        return self.a + self.b

    def updated(self, events: int, trials: int) -> BetaPrior:
        return BetaPrior(self.a + events, self.b + trials - events)

    def __repr__(self) -> str:
        return f"BetaPrior(a={self.a:.3g}, b={self.b:.3g})"


class PeerSums:
    """What the peer statistics need of the peers' (events, trials) pairs, as sums.

    `fit_beta_prior` and `funnel_z` depend on the peers only through these sums (units with
    trials > 0: their number, sum of events, of trials, of events^2/trials, of trials^2, of
    1/trials), so a hall's totals are computed once and each unit's peers are the totals minus
    the unit itself (`without`): leave-one-out in constant time instead of a pass over the hall.
    """

    __slots__ = ("events", "inv_trials", "n", "sq_over_trials", "trials", "trials_sq")

    def __init__(self, n: int = 0, events: float = 0.0, trials: float = 0.0,
                 sq_over_trials: float = 0.0, trials_sq: float = 0.0,
                 inv_trials: float = 0.0) -> None:
        self.n, self.events, self.trials = n, events, trials
        self.sq_over_trials, self.trials_sq, self.inv_trials = sq_over_trials, trials_sq, inv_trials

    @classmethod
    def of(cls, events: Sequence[int], trials: Sequence[int]) -> PeerSums:
        out = cls()
        for e, t in zip(events, trials, strict=True):
            out = out.plus(e, t)
        return out

    def plus(self, e: float, t: float, sign: int = 1) -> PeerSums:
        if t <= 0:
            return self
        return PeerSums(self.n + sign, self.events + sign * e, self.trials + sign * t,
                        self.sq_over_trials + sign * e * e / t, self.trials_sq + sign * t * t,
                        self.inv_trials + sign / t)

    def without(self, e: float, t: float) -> PeerSums:
        """The sums without one unit's (e, t) (which must have been added)."""
        return self.plus(e, t, -1)


def fit_beta_prior(
    events: Sequence[int], trials: Sequence[int], *, max_strength: float, min_mean: float = 1e-3
) -> BetaPrior:
    """Method-of-moments Beta prior for per-unit rates events[i]/trials[i].

    The between-unit variance is the observed variance of the rates (weighted by trials) minus the
    part binomial sampling explains; what is left is the real spread of quality between windows
    (over-dispersion). When peers look identical the prior is capped at `max_strength`
    pseudo-observations, so that a window is never judged as if the hall knew its true rate
    better than that many ratings would tell.
    """
    return fit_beta_prior_sums(PeerSums.of(events, trials), max_strength=max_strength,
                               min_mean=min_mean)


def fit_beta_prior_sums(peers: PeerSums, *, max_strength: float, min_mean: float = 1e-3
                        ) -> BetaPrior:
    """`fit_beta_prior` from the peers' sums."""
    total_t = peers.trials
    if peers.n <= 0 or total_t <= 0:
        return BetaPrior(min_mean * max_strength, (1 - min_mean) * max_strength)
    mean = peers.events / total_t
    mean = min(max(mean, min_mean), 1 - min_mean)
    strength = max_strength
    if peers.n >= 2:
        # sum t (e/t - mean)^2 = sum e^2/t - 2 mean sum e + mean^2 sum t
        var = max(0.0, peers.sq_over_trials - 2 * mean * peers.events
                  + mean * mean * total_t) / total_t
        sampling = mean * (1 - mean) * peers.inv_trials / peers.n
        between = var - sampling
        if between > 1e-15:
            strength = min(max_strength, max(2.0, mean * (1 - mean) / between - 1))
    return BetaPrior(mean * strength, (1 - mean) * strength)


def funnel_z(events: int, trials: int, peer_events: Sequence[int], peer_trials: Sequence[int]
             ) -> tuple[float, float, float]:
    """Funnel-plot z-score of one unit's proportion against its peers, over-dispersion adjusted.

    Target p0 is the peers' pooled proportion; the between-peer variance tau^2 is the
    DerSimonian-Laird random-effects estimate (Spiegelhalter 2005, additive over-dispersion),
    so the control limits are p0 +- z * sqrt(p0(1-p0)/n + tau^2): they narrow with volume but
    never below the real spread of peers. Returns (z, p0, tau^2).
    """
    return funnel_z_sums(events, trials, PeerSums.of(peer_events, peer_trials))


def funnel_z_sums(events: int, trials: int, peers: PeerSums,
                  center: float | None = None) -> tuple[float, float, float]:
    """`funnel_z` from the peers' sums. With weights w_i = t_i / (p0 (1 - p0)) the weighted
    mean of the peers' rates is their pooled rate, and Cochran's Q and the DerSimonian-Laird
    denominator reduce to the sums of `PeerSums`. `center`, if given, replaces the pooled rate
    as the reference (e.g. the peers' median, which a minority of windows cannot move); the
    spread between windows is still the peers' own."""
    total = peers.trials
    if peers.n <= 0 or total <= 0 or trials == 0:
        return 0.0, math.nan, 0.0
    pooled = peers.events / total
    p0 = min(max(pooled, 0.5 / total), 1 - 0.5 / total)
    tau2 = 0.0
    if peers.n >= 2:
        scale = 1 / (p0 * (1 - p0))
        q = scale * max(0.0, peers.sq_over_trials - total * pooled * pooled)
        denom = scale * (total - peers.trials_sq / total)
        if denom > 0:
            tau2 = max(0.0, (q - (peers.n - 1)) / denom)
    if center is not None:
        p0 = min(max(center, 0.5 / total), 1 - 0.5 / total)
    se = math.sqrt(p0 * (1 - p0) / trials + tau2)
    return (events / trials - p0) / se, p0, tau2


def below_order_statistic_sf(x: int, n: int, m: int, k: int) -> float:
    """P(X >= x), X the number of n new values below the k-th smallest of m reference values,
    when all n + m values are exchangeable (drawn from the same distribution, whatever it is).

    Exact and distribution-free: P(X = j) = C(j+k-1, j) C(n-j+m-k, n-j) / C(n+m, n) (the k-th
    reference value sits at position j + k of the pooled order). Ties only make X smaller."""
    if x <= 0:
        return 1.0
    if x > n or not 1 <= k <= m:
        return 0.0 if x > n else 1.0
    log_total = _log_choose(n + m, n)
    total = -math.inf
    for j in range(x, n + 1):
        total = _log_add(total, _log_choose(j + k - 1, j) + _log_choose(n - j + m - k, n - j))
    return min(1.0, math.exp(total - log_total))


def below_order_statistic_pmf(n: int, m: int, k: int) -> list[float]:
    """[P(X = j) for j = 0..n] of `below_order_statistic_sf`'s X."""
    log_total = _log_choose(n + m, n)
    return [math.exp(_log_choose(j + k - 1, j) + _log_choose(n - j + m - k, n - j) - log_total)
            for j in range(n + 1)]


def hypergeom_pmf(total: int, marked: int, drawn: int) -> list[float]:
    """[P(X = j) for j = 0..drawn] of `hypergeom_sf`'s X (zero outside its support)."""
    log_total = _log_choose(total, drawn)
    lo, hi = max(0, drawn - (total - marked)), min(drawn, marked)
    return [math.exp(_log_choose(marked, j) + _log_choose(total - marked, drawn - j) - log_total)
            if lo <= j <= hi else 0.0 for j in range(drawn + 1)]


def convolution_sf(pmfs: Sequence[Sequence[float]], x: int) -> float:
    """P(X_1 + ... + X_r >= x) for independent X_i with the given pmfs (on 0, 1, 2, ...):
    the exact law of a total over strata each judged against its own reference."""
    if not pmfs:
        return 1.0 if x <= 0 else 0.0
    acc: list[float] = [1.0]
    for pmf in pmfs[:-1]:
        out = [0.0] * (len(acc) + len(pmf) - 1)
        for i, a in enumerate(acc):
            if a:
                for j, b in enumerate(pmf):
                    out[i + j] += a * b
        acc = out
    last = pmfs[-1]
    tail = [0.0] * (len(last) + 1)  # tail[j] = P(X_r >= j)
    for j in range(len(last) - 1, -1, -1):
        tail[j] = tail[j + 1] + last[j]
    total = 0.0
    for i, a in enumerate(acc):
        need = x - i
        total += a * (1.0 if need <= 0 else tail[need] if need < len(tail) else 0.0)
    return min(1.0, max(0.0, total))


def hypergeom_sf(x: int, total: int, marked: int, drawn: int) -> float:
    """P(X >= x) for X the number of marked items among `drawn` drawn without replacement from
    `total` items of which `marked` are marked (hypergeometric): exact, in log space."""
    lo, hi = max(0, drawn - (total - marked)), min(drawn, marked)
    if x <= lo:
        return 1.0
    if x > hi:
        return 0.0
    log_total = _log_choose(total, drawn)
    acc = -math.inf
    for j in range(x, hi + 1):
        acc = _log_add(acc, _log_choose(marked, j) + _log_choose(total - marked, drawn - j))
    return min(1.0, math.exp(acc - log_total))


def truncated_product_p(pvalues: Sequence[float], tau: float) -> float:
    """Combined p-value of independent p-values by the truncated product method (Zaykin et al.
    2002): W is the product of the p-values at or below `tau` (1 if none), and
    P(W <= w) = sum_k C(L,k) (1-tau)^(L-k) [w sum_{s<k} (k ln tau - ln w)^s / s!  if w <= tau^k,
    else tau^k]. Only p-values that are evidence on their own (<= tau) count, so many
    unremarkable ones neither dilute nor add; with tau = 1 it is Fisher's method."""
    ps = [min(1.0, max(p, 1e-300)) for p in pvalues]
    kept = [p for p in ps if p <= tau]
    if not kept:
        return 1.0
    n = len(ps)
    log_w = sum(math.log(p) for p in kept)
    log_tau = math.log(tau)
    total = 0.0
    for k in range(1, n + 1):
        weight = math.comb(n, k) * (1 - tau) ** (n - k)
        if log_w <= k * log_tau:
            x = k * log_tau - log_w  # >= 0
            term, acc = 1.0, 1.0
            for s_ in range(1, k):
                term *= x / s_
                acc += term
            total += weight * math.exp(log_w) * acc
        else:
            total += weight * tau ** k
    return min(1.0, total)


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order."""
    m = len(pvalues)
    if m == 0:
        return []
    order = sorted(range(m), key=lambda i: pvalues[i])
    q = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, pvalues[i] * m / rank)
        q[i] = min(1.0, running)
    return q
