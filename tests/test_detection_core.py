"""Statistics, settings, verdict rules and integrity points of the detector (pure parts)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import date

import pytest

from collector.config import ConfigError
from collector.detection import DetectionSettings, Indicator, judge, stats
from collector.detection.points import indicator_point, verdict_point

# -- statistics ----------------------------------------------------------------------------------


def _binomial_sf_direct(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.3), (3, 10, 0.1), (7, 20, 0.5), (50, 50, 0.9),
                                           (1, 200, 0.001), (11, 10, 0.5)])
def test_binomial_tail_matches_the_sum_of_terms(k, n, p):
    assert stats.binomial_sf(k, n, p) == pytest.approx(_binomial_sf_direct(k, n, p), rel=1e-9,
                                                       abs=1e-300)


@pytest.mark.parametrize(("k", "mu"), [(0, 2.0), (1, 2.0), (5, 1.0), (30, 4.0), (3, 50.0)])
def test_poisson_tail_matches_the_sum_of_terms(k, mu):
    direct = 1 - sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(k))
    assert stats.poisson_sf(k, mu) == pytest.approx(direct, rel=1e-7, abs=1e-15)


def test_beta_binomial_is_a_distribution_and_wider_than_the_binomial():
    n, a, b = 40, 2.0, 38.0
    total = stats.beta_binomial_cdf(n, n, a, b)
    assert total == pytest.approx(1.0)
    below, above = stats.beta_binomial_cdf(3, n, a, b), stats.beta_binomial_sf(4, n, a, b)
    assert below + above == pytest.approx(1)
    # Same mean rate (5 %), but the spread between windows fattens the tail.
    assert stats.beta_binomial_sf(8, n, a, b) > stats.binomial_sf(8, n, 0.05)


def test_run_without_event_equals_the_beta_binomial_zero():
    zero = stats.beta_binomial_cdf(0, 50, 3, 97)
    assert stats.run_without_event_p(50, 3, 97) == pytest.approx(zero)
    assert stats.run_without_event_p(0, 3, 97) == 1.0


def test_benjamini_hochberg_known_values():
    q = stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    assert q == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert stats.benjamini_hochberg([]) == []


def test_beta_prior_captures_real_spread_and_is_capped_without_it():
    rng = random.Random(3)
    rates = [rng.uniform(0.01, 0.12) for _ in range(40)]
    events = [sum(rng.random() < r for _ in range(400)) for r in rates]
    spread = stats.fit_beta_prior(events, [400] * 40, max_strength=1000)
    assert 0.04 < spread.mean < 0.09
    assert spread.strength < 100  # the windows really differ
    same = stats.fit_beta_prior([20] * 10, [400] * 10, max_strength=100)
    assert same.strength == 100 and same.mean == pytest.approx(0.05)


def test_funnel_z_accounts_for_overdispersion():
    peers_e, peers_n = [80, 60, 90, 70, 85], [100] * 5
    z, p0, tau2 = stats.funnel_z(99, 100, peers_e, peers_n)
    assert p0 == pytest.approx(0.77) and tau2 > 0
    naive = (0.99 - 0.77) / math.sqrt(0.77 * 0.23 / 100)
    assert 0 < z < naive  # the peers' own spread widens the limits
    z_small, _, _ = stats.funnel_z(10, 10, peers_e, peers_n)
    assert z_small < z  # and small volumes get wider limits still


@pytest.mark.parametrize(("x", "total", "marked", "drawn"), [
    (0, 20, 5, 8), (2, 20, 5, 8), (5, 20, 5, 8), (6, 20, 5, 8), (3, 100, 4, 90), (1, 50, 0, 10)])
def test_hypergeometric_tail_matches_the_sum_of_terms(x, total, marked, drawn):
    direct = sum(math.comb(marked, j) * math.comb(total - marked, drawn - j)
                 for j in range(x, min(marked, drawn) + 1)) / math.comb(total, drawn)
    assert stats.hypergeom_sf(x, total, marked, drawn) == pytest.approx(min(1.0, direct),
                                                                        rel=1e-9, abs=1e-300)


def test_peer_sums_leave_one_out_equals_recomputing_without_the_unit():
    rng = random.Random(5)
    trials = [rng.randint(0, 300) for _ in range(30)]
    events = [rng.randint(0, t) for t in trials]
    hall = stats.PeerSums.of(events, trials)
    for i in (0, 7, 29):
        peers_e, peers_t = events[:i] + events[i + 1:], trials[:i] + trials[i + 1:]
        loo = hall.without(events[i], trials[i])
        direct = stats.fit_beta_prior(peers_e, peers_t, max_strength=100)
        fast = stats.fit_beta_prior_sums(loo, max_strength=100)
        assert (fast.a, fast.b) == pytest.approx((direct.a, direct.b), rel=1e-9)
        assert stats.funnel_z_sums(events[i], max(trials[i], 1), loo) == pytest.approx(
            stats.funnel_z(events[i], max(trials[i], 1), peers_e, peers_t), rel=1e-9)


def test_truncated_product_is_fisher_at_tau_one_and_uniform_under_the_null():
    fisher = lambda x: math.exp(-x / 2) * (1 + x / 2)  # noqa: E731 (chi-square, 4 df)
    assert stats.truncated_product_p([0.01, 0.2], 1.0) == pytest.approx(
        fisher(-2 * math.log(0.002)))
    assert stats.truncated_product_p([0.01], 0.05) == pytest.approx(0.01)
    assert stats.truncated_product_p([0.3, 0.9], 0.05) == 1.0
    rng = random.Random(8)
    combined = [stats.truncated_product_p([rng.random() for _ in range(4)], 0.05)
                for _ in range(20_000)]
    for alpha in (0.05, 0.01):
        assert sum(p <= alpha for p in combined) / len(combined) == pytest.approx(alpha, rel=0.2)


# -- settings ------------------------------------------------------------------------------------


def test_settings_parse_hours_days_and_offset():
    s = DetectionSettings.defaults(opening_hours="08:00-12:00, 14:00-18:00", business_days="1-5,6",
                                   utc_offset="+08:00")
    assert s.opening_hours == ((480, 720), (840, 1080))
    assert s.business_days == frozenset(range(1, 7))
    saturday = date(2026, 3, 7)
    open_ = s.open_intervals(saturday)
    assert open_[0][0] == s.midnight_ms(saturday) + 8 * 3600_000
    assert s.is_open(open_[0][0]) and not s.is_open(open_[0][0] - 1)
    assert s.open_intervals(date(2026, 3, 8)) == []  # Sunday


@pytest.mark.parametrize(("key", "value"), [
    ("opening_hours", "8-12"), ("opening_hours", "12:00-08:00"), ("business_days", "0-5"),
    ("utc_offset", "UTC+8")])
def test_bad_settings_are_refused_with_the_option_named(key, value):
    with pytest.raises(ConfigError, match=key):
        DetectionSettings.defaults(**{key: value})


def test_rolling_period_counts_business_days_back():
    s = DetectionSettings.defaults(lookback_days=3)
    monday_noon = s.midnight_ms(date(2026, 3, 9)) + 12 * 3600_000
    day, rolling = s.periods(monday_noon)
    assert day.days == (date(2026, 3, 9),) and day.end_ms == monday_noon
    assert rolling.days == (date(2026, 3, 5), date(2026, 3, 6), date(2026, 3, 9))


# -- verdict -------------------------------------------------------------------------------------


def _ind(name: str, strength: str, decisive: bool = True, q: float | None = 1e-6) -> Indicator:
    return Indicator(name, 1.0, strength, decisive, q, q, {}, f"{name} 原因", f"{name} reason")


@pytest.mark.parametrize(("indicators", "severity"), [
    ([], 0),
    ([_ind("satisfaction_high", "strong", decisive=False)], 1),
    ([_ind("fast_response", "weak")], 1),
    ([_ind("fast_response", "strong")], 2),
    ([_ind("fast_response", "strong"), _ind("satisfaction_high", "weak", decisive=False)], 3),
    ([_ind("burst", "strong"), _ind("unmatched", "strong")], 3),
    ([_ind("burst", "none"), _ind("unmatched", "none")], 0),
])
def test_severity_rules(indicators, severity):
    v = judge("h1", "w1", None, "day", indicators)
    assert v.severity == severity
    assert v.flagged == (severity >= 2)


def _weak(name: str, p: float) -> Indicator:
    return Indicator(name, 1.0, "weak", True, p, p * 10, {}, f"{name} 原因", f"{name} reason")


def test_weak_signals_of_independent_kinds_combine():
    from collector.detection.verdict import Combined, combine

    shift, keys = _weak("response_shift", 2e-4), _weak("uninvited_presses", 1e-3)
    fast, sat = _weak("fast_response", 1e-4), _weak("satisfaction_high", 1e-6)
    p, agreeing = combine([shift, keys, sat], 0.05)
    assert agreeing == (shift, keys) and p < 1e-4
    # One kind of evidence (response times) twice is not two kinds; satisfaction is no kind.
    assert combine([shift, fast, sat], 0.05) == (1.0, ())
    v = judge("h1", "w1", None, "day", [shift, keys, sat], Combined(p, p * 5, True, agreeing))
    assert v.flagged and v.severity == 3  # satisfaction above peers points the same way
    assert "2 independent kinds of signal agree (response times, presses outside" in v.reasons_en[0]
    assert "response_shift reason; uninvited_presses reason" in v.reasons_en[0]
    assert "2 类相互独立的迹象同时出现" in v.reasons_zh[0]
    line = verdict_point(v, 1_772_380_800_000, 1_772_380_800_001)
    assert 'combined="response_shift,uninvited_presses"' in line and "combined_strong=1i" in line
    quiet = judge("h1", "w1", None, "day", [shift, keys], Combined(p, 0.01, False, agreeing))
    assert quiet.severity == 1 and not quiet.flagged


def test_a_signal_resting_on_a_single_observation_does_not_join_the_combination():
    from collector.detection.verdict import combine

    fast = replace(_weak("fast_response", 0.005), events=1)  # one rating under 0.8 s
    keys = replace(_weak("uninvited_presses", 0.005), events=1)  # one stray press of 5
    assert combine([fast, keys], 0.05, min_count=1)[0] < 1e-3  # the rule before
    assert combine([fast, keys], 0.05, min_count=2) == (1.0, ())
    # Within a group the best signal with enough behind it stands in, still with the group's
    # Bonferroni factor (two timing indicators were tested).
    shift, two = replace(_weak("response_shift", 0.01), events=6), replace(keys, events=2)
    p, agreeing = combine([fast, shift, two], 0.05, min_count=2)
    assert agreeing == (shift, two)
    assert p == stats.truncated_product_p([0.02, 0.005], 0.05)


def test_reasons_put_strong_evidence_first():
    v = judge("h1", "w1", None, "day", [_ind("satisfaction_high", "weak", False, 0.01),
                                        _ind("burst", "strong", True, 1e-5)])
    assert v.reasons_en == ("burst reason", "satisfaction_high reason")
    assert v.reasons("zh")[0] == "burst 原因"


# -- points --------------------------------------------------------------------------------------


def test_points_have_stable_identity_and_carry_both_languages():
    v = judge("h1", "w1", None, "day", [_ind("burst", "strong"), _ind("unmatched", "none")])
    midnight = 1_772_380_800_000
    first = verdict_point(v, midnight, computed_ms=midnight + 1)
    again = verdict_point(v, midnight, computed_ms=midnight + 999)
    key = lambda line: (line.split(" ")[0], line.rsplit(" ", 1)[1])  # noqa: E731
    assert key(first) == key(again)  # a re-run overwrites the same point
    assert first.startswith("integrity_verdict,hall=h1,period=day,staff=*,window=w1 ")
    assert "severity=2i" in first and "flagged=1i" in first
    assert 'combined=""' in first and "combined_strong=0i" in first
    assert 'reasons_zh="burst 原因"' in first and 'reasons_en="burst reason"' in first
    ind = indicator_point(v, 0, midnight, midnight + 1)
    assert ind.startswith("integrity,hall=h1,indicator=burst,period=day,staff=*,window=w1 ")
    assert 'strength="strong"' in ind and "evidence=" in ind
    other = indicator_point(v, 1, midnight, midnight + 1)
    assert key(other)[1] != key(ind)[1] or key(other)[0] != key(ind)[0]
