import json
import math

import pytest
from scipy.stats import binomtest

from upstream.errors import InvalidInput
from upstream.stats import (
    Z95,
    agresti_min,
    compare,
    harm_bound,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_difference,
    resolvable_breaks,
    wilson,
)


@pytest.mark.parametrize(
    "passed, n, expected",
    [
        # Textbook values (Newcombe 1998; Agresti & Coull 1998) at 95 %.
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (5, 10, (0.2366, 0.7634)),
        (1, 10, (0.0179, 0.4042)),
    ],
)
def test_wilson_matches_textbook_values(passed: int, n: int, expected: tuple[float, float]) -> None:
    low, high = wilson(passed, n)
    assert low == pytest.approx(expected[0], abs=1e-4)
    assert high == pytest.approx(expected[1], abs=1e-4)


def test_wilson_without_cases_is_the_whole_range_and_rejects_bad_counts() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(InvalidInput, match="passed=11"):
        wilson(11, 10)


@pytest.mark.parametrize(
    "fixed, broken, expected",
    [(10, 0, 2 * 0.5**10), (0, 10, 2 * 0.5**10), (5, 5, 1.0), (0, 0, 1.0)],
)
def test_mcnemar_exact_known_values(fixed: int, broken: int, expected: float) -> None:
    assert mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("fixed, broken", [(7, 2), (1, 12), (30, 18), (3, 3)])
def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs(fixed: int, broken: int) -> None:
    expected = binomtest(fixed, fixed + broken, 0.5).pvalue
    assert mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-12)


def test_paired_difference_without_clusters_matches_hand_computation() -> None:
    base = [True, True, False, False, True]
    cand = [True, False, True, True, True]
    # d = [0, -1, 1, 1, 0]; mean 0.2; Σ(d - mean)² = 2.8; s² = 0.7; SE = sqrt(0.7 / 5)
    result = paired_difference(base, cand)
    se = math.sqrt(0.14)
    assert result.diff == pytest.approx(0.2)
    assert result.se == pytest.approx(se)
    assert result.low == pytest.approx(0.2 - 1.959964 * se)
    assert result.high == pytest.approx(0.2 + 1.959964 * se)
    assert (result.n, result.n_clusters) == (5, 5)


def test_clusters_that_move_together_widen_the_interval() -> None:
    # Five reports with two variants each; the variants of a report always agree.
    base = [False] * 10
    cand = [True] * 4 + [False] * 6
    clusters = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"]
    naive = paired_difference(base, cand)
    clustered = paired_difference(base, cand, clusters)
    # d = [1]*4 + [0]*6, mean 0.4. Naive: s² = (4·0.36 + 6·0.16) / 9; SE = sqrt(s² / 10).
    assert naive.se == pytest.approx(math.sqrt(2.4 / 9 / 10))
    # Clustered: cluster sums 1.2, 1.2, -0.8, -0.8, -0.8 → Σ² = 4.8; SE = sqrt(5/4 · 4.8) / 10.
    assert clustered.se == pytest.approx(math.sqrt(5 / 4 * 4.8) / 10)
    assert clustered.se > naive.se
    assert clustered.high - clustered.low > naive.high - naive.low
    assert clustered.diff == naive.diff == pytest.approx(0.4)
    assert clustered.n_clusters == 5


def test_singleton_clusters_give_the_naive_se() -> None:
    base = [True, False, True, True, False, False, True, False]
    cand = [True, True, False, True, True, False, True, True]
    naive = paired_difference(base, cand)
    clustered = paired_difference(base, cand, [str(i) for i in range(8)])
    # With G = n, G/(G-1) · Σ(d_i - mean)² / n² = n/(n-1) · (n-1)s² / n² = s²/n exactly.
    assert clustered.se == pytest.approx(naive.se, rel=1e-12)
    assert clustered.n_clusters == 8


def test_one_cluster_falls_back_to_the_naive_se() -> None:
    base = [True, False, False]
    cand = [True, True, False]
    one = paired_difference(base, cand, ["r", "r", "r"])
    assert one.se == pytest.approx(paired_difference(base, cand).se)
    assert one.n_clusters == 3


def test_paired_difference_edges() -> None:
    empty = paired_difference([], [])
    assert (empty.low, empty.high, empty.n) == (-1.0, 1.0, 0)
    # Every case fixed with a huge z: the interval is clipped to [-1, 1].
    wide = paired_difference([False, True, False], [True, False, True], z=100.0)
    assert (wide.low, wide.high) == (-1.0, 1.0)
    with pytest.raises(InvalidInput, match="cand 2"):
        paired_difference([True], [True, False])


def test_minimum_detectable_effect() -> None:
    assert minimum_detectable_effect(0, 0.5) == 1.0
    # (z_0.975 + z_0.8) · sqrt(0.5 / 100), with the conservative p_disc = 2·0.5·0.5.
    assert minimum_detectable_effect(100, 0.5) == pytest.approx(
        (1.959964 + 0.841621) * math.sqrt(0.005), abs=1e-5
    )
    sizes = [10, 50, 100, 500, 1000]
    mdes = [minimum_detectable_effect(n, 0.7) for n in sizes]
    assert mdes == sorted(mdes, reverse=True) and len(set(mdes)) == len(mdes)
    # Observed discordance replaces the guess: fewer changes, smaller MDE.
    assert minimum_detectable_effect(200, 0.5, discordance=0.1) < minimum_detectable_effect(
        200, 0.5
    )
    assert minimum_detectable_effect(3, 0.5) == 1.0  # clipped
    # No changes at all: the exact test still needs 6 one-way changes to reach p < 0.05.
    assert minimum_detectable_effect(1000, 0.5, discordance=0.0) == pytest.approx(6 / 1000)
    assert 2 * 0.5**6 <= 0.05 < 2 * 0.5**5


def test_compare_pairs_cases_present_in_both() -> None:
    base = {"c1": True, "c2": False, "c3": False, "c4": True, "c5": True, "only_base": False}
    cand = {"c1": True, "c2": True, "c3": True, "c4": False, "c5": True, "only_cand": True}
    result = compare(base, cand, clusters={"c2": "r1", "c3": "r1"})
    assert result.fixed == ["c2", "c3"]
    assert result.broken == ["c4"]
    assert result.n == 5
    assert result.base_rate == pytest.approx(3 / 5)
    assert result.cand_rate == pytest.approx(4 / 5)
    assert result.paired.diff == pytest.approx(result.cand_rate - result.base_rate)
    # c2, c3 share report r1; c1, c4, c5 have no report and are clusters of their own.
    assert result.paired.n_clusters == 4
    assert result.p_value == pytest.approx(binomtest(2, 3, 0.5).pvalue)
    assert result.mde == pytest.approx(minimum_detectable_effect(5, 0.6, discordance=3 / 5))
    data = json.loads(json.dumps(result.as_dict()))
    assert data["fixed"] == ["c2", "c3"] and data["paired"]["n"] == 5


def test_compare_with_no_shared_cases() -> None:
    result = compare({"a": True}, {"b": False})
    assert (result.n, result.fixed, result.broken) == (0, [], [])
    assert (result.p_value, result.mde) == (1.0, 1.0)


# ---------------------------------------------------------------- non-inferiority


def broke(k: int, n: int) -> tuple[list[bool], list[bool]]:
    """A candidate that breaks k of n cases the base passed and fixes none."""
    return [True] * k + [False] * (n - k), [False] * n


def test_agresti_min_adds_half_a_case_to_each_cell() -> None:
    # 1 broken of 48: n* = 50, p_f = 0.5/50, p_b = 1.5/50, d* = -0.02,
    # Var = (0.04 - 0.0004) / 50
    low, high = agresti_min(0, 1, 48)
    half = Z95 * math.sqrt((0.04 - 0.0004) / 50)
    assert (low, high) == (pytest.approx(-0.02 - half), pytest.approx(-0.02 + half))
    # nothing changed: centred on 0 and still as wide as the suite is small
    assert agresti_min(0, 0, 24) == (pytest.approx(-Z95 / 26), pytest.approx(Z95 / 26))
    with pytest.raises(InvalidInput, match="fixed \\+ broken ≤ n"):
        agresti_min(3, 3, 5)


@pytest.mark.parametrize(
    "broken, n, expected",
    [
        (0, 24, -0.0754),  # Agresti–Min: the Wald SE is 0 here
        (1, 24, -0.1440),
        (2, 24, -0.2041),
        (4, 24, -0.3190),  # the Wald interval is the lower one here
        (0, 48, -0.0392),
        (1, 48, -0.0752),
        (2, 48, -0.1070),
        (4, 48, -0.1648),
    ],
)
def test_harm_bound_is_the_lower_of_two_intervals(broken: int, n: int, expected: float) -> None:
    base, cand = broke(broken, n)
    bound = harm_bound(base, cand)
    assert bound == pytest.approx(expected, abs=1e-4)
    assert bound == min(paired_difference(base, cand).low, agresti_min(0, broken, n)[0])


def test_harm_bound_widens_when_broken_cases_share_a_report() -> None:
    # 4 broken of 48, as 4 variants of one report or as 4 reports of their own
    base, cand = broke(4, 48)
    apart = harm_bound(base, cand, [f"r{i}" for i in range(48)])
    together = harm_bound(base, cand, ["r0"] * 4 + [f"r{i}" for i in range(4, 48)])
    assert together < apart == pytest.approx(-0.1648, abs=1e-4)
    assert together == pytest.approx(
        paired_difference(base, cand, ["r0"] * 4 + [f"r{i}" for i in range(4, 48)]).low
    )


def test_resolvable_breaks_at_a_ten_point_margin() -> None:
    assert resolvable_breaks(24, 0.10) == 0  # one broken case of 24 already fails
    assert resolvable_breaks(48, 0.10) == 1  # one passes, two fail
    assert resolvable_breaks(12, 0.10) == -1  # even an unchanged candidate's bound is −15 %
    assert resolvable_breaks(48, 0.20) > resolvable_breaks(48, 0.10)
    # a large suite: the McNemar rule stops it before the margin does (6 one-way: p 0.03)
    assert resolvable_breaks(2000, 0.10) > 100
    assert resolvable_breaks(2000, 0.10, regression_p=0.05) == 5
    with pytest.raises(InvalidInput, match="margin=1"):
        resolvable_breaks(24, 1)


def test_compare_counts_what_the_base_knew_in_the_harm_pairing() -> None:
    base = {f"c{i}": i < 2 for i in range(48)}  # passes c0, c1
    cand = {f"c{i}": i == 1 for i in range(48)}  # breaks c0
    knew = {"c2": True, "c3": True, "c4": False}  # the base stated c2's and c3's answers
    plain = compare(base, cand)
    counted = compare(base, cand, base_knew=knew)
    assert counted.broken == plain.broken == ["c0"]  # strict figures stay strict
    assert counted.p_value == plain.p_value
    assert (plain.harm.broken, counted.harm.broken) == (1, 3)
    assert plain.harm.low == pytest.approx(-0.0752, abs=1e-4)
    assert counted.harm.low < -0.10
    assert json.loads(json.dumps(counted.as_dict()))["harm"]["broken"] == 3
    # the candidate still states c2's answer (in the same wrong form): only c3 is lost
    assert compare(base, cand, base_knew=knew, cand_knew={"c2": True}).harm.broken == 2
    # an unchanged candidate changes nothing, and a wrong-form answer is never a fix
    same = compare(base, base, base_knew=knew, cand_knew=knew)
    assert (same.harm.broken, same.harm.fixed) == (0, 0)
    assert compare(cand, cand, cand_knew={"c4": True}).harm.fixed == 0


def test_the_allowance_never_grows_as_a_suite_shrinks_or_the_margin_tightens() -> None:
    from upstream.stats import allowance, harm_passes

    assert allowance(60, 0.10, 0.05) == stats_allowance(2, True)
    assert allowance(48, 0.10, 0.05) == stats_allowance(1, True)
    assert allowance(24, 0.10, 0.05) == stats_allowance(1, False)  # observed change, ≤ 1
    assert allowance(8, 0.10, 0.05) == stats_allowance(0, False)  # 1 of 8 is 12.5 %
    margins = [0.03, 0.05, 0.08, 0.10, 0.15, 0.20]
    for m in margins:
        allowed = [allowance(n, m, 0.05).breaks for n in range(5, 101)]
        assert allowed == sorted(allowed), m  # more cases never allow fewer breaks
    for n in range(5, 101):
        allowed = [allowance(n, m, 0.05).breaks for m in margins]
        assert allowed == sorted(allowed), n  # a wider margin never allows fewer
    small = allowance(14, 0.10, 0.05)
    assert harm_passes(-0.3, fixed=1, broken=2, n=14, rule=small, margin=0.10)  # net 1
    assert not harm_passes(-0.3, fixed=0, broken=2, n=14, rule=small, margin=0.10)
    assert harm_passes(-0.9, fixed=0, broken=0, n=3, rule=allowance(3, 0.1), margin=0.10)


def stats_allowance(breaks: int, by_bound: bool):  # type: ignore[no-untyped-def]
    from upstream.stats import Allowance

    return Allowance(breaks, by_bound)
