"""Statistics for eval runs: pass-rate intervals and paired comparisons of two subjects.

Everything here is a pure function of pass/fail outcomes, so a comparison can be
recomputed from stored results at any time. Two subjects measured on the same cases
are compared *paired*: each case is its own control, so what matters is the cases
whose outcome changed (fixed: fail→pass, broken: pass→fail), not the two pass rates
taken separately.

- `wilson`: a 95 % interval for one pass rate that behaves at 0/n and n/n.
- `mcnemar_exact`: is "fixed" more common than "broken" beyond chance?
- `paired_difference`: the change in pass rate with a standard error that can be
  clustered by source report (variants of one report pass or fail together).
- `minimum_detectable_effect`: how large a change the suite is able to see at all.
- `agresti_min`, `harm_bound`: the lower 95 % bound of the change that the merge policy's
  non-inferiority rule reads (the candidate may lose at most a margin of pass rate).
- `resolvable_breaks`: how many broken cases a suite of n cases lets through at a margin;
  `allowance` and `harm_passes`: the rule the CI applies, small suites included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from upstream.errors import InvalidInput

Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a pass rate of `passed` out of `n`."""
    if n < 0 or not 0 <= passed <= n:
        raise InvalidInput(f"passed={passed}, n={n}: need 0 <= passed <= n")
    if n == 0:
        return (0.0, 1.0)  # no cases: the rate could be anything
    # Unlike the Wald interval p ± z·sqrt(p(1-p)/n), Wilson's inverts the score test,
    # so it stays inside [0, 1] and does not collapse to a point at 0/n or n/n.
    p = passed / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """The exact two-sided McNemar p-value for `fixed` vs `broken` discordant pairs."""
    if fixed < 0 or broken < 0:
        raise InvalidInput(f"fixed={fixed}, broken={broken}: counts cannot be negative")
    m = fixed + broken
    if m == 0:
        return 1.0  # nothing changed: no evidence either way
    # Cases that pass (or fail) under both subjects say nothing about which is better.
    # Under "no difference", each changed case is equally likely to be a fix or a
    # break, so `fixed` ~ Binomial(m, 1/2); the exact test avoids the chi-square
    # approximation, which is poor for the handful of changes a suite usually shows.
    from scipy.stats import binomtest  # scipy is slow to import; only comparisons need it

    return float(min(1.0, binomtest(fixed, m, 0.5).pvalue))


@dataclass(frozen=True)
class PairedDiff:
    diff: float  # candidate pass rate − base pass rate
    se: float  # standard error of `diff`
    low: float  # interval bounds, clipped to [-1, 1]
    high: float
    n: int  # cases
    n_clusters: int  # clusters used for the SE (n when unclustered)


def _naive_se(d: Sequence[int], mean: float) -> float:
    """The standard error of a mean of paired differences taken as independent."""
    n = len(d)
    if n < 2:
        return 0.0
    var = sum((x - mean) ** 2 for x in d) / (n - 1)  # sample variance (n - 1)
    return math.sqrt(var / n)


def paired_difference(
    base: Sequence[bool],
    cand: Sequence[bool],
    clusters: Sequence[str] | None = None,
    z: float = Z95,
) -> PairedDiff:
    """The paired difference in pass rate (cand − base) with a (clustered) interval."""
    n = len(base)
    if len(cand) != n or (clusters is not None and len(clusters) != n):
        raise InvalidInput(
            f"base has {n} cases, cand {len(cand)}"
            + (f", clusters {len(clusters)}" if clusters is not None else "")
            + ": need one entry per case in each"
        )
    if n == 0:
        return PairedDiff(0.0, 0.0, -1.0, 1.0, 0, 0)  # no cases: any difference is possible
    # d_i is +1 for a fixed case, -1 for a broken one, 0 when unchanged; its mean is
    # exactly cand rate − base rate.
    d = [int(c) - int(b) for b, c in zip(base, cand, strict=True)]
    mean = sum(d) / n
    se = _naive_se(d, mean)
    n_clusters = n
    if clusters is not None:
        # Variants of one source report tend to pass or fail together, so they carry
        # less information than as many independent cases. The cluster-robust (CR1)
        # variance of a mean sums the residuals within each cluster before squaring:
        #   Var = G/(G-1) · Σ_g (Σ_{i∈g} (d_i − mean))² / n²
        # With one case per cluster this equals the naive s²/n exactly.
        sums: dict[str, float] = {}
        for key, x in zip(clusters, d, strict=True):
            sums[key] = sums.get(key, 0.0) + (x - mean)
        g = len(sums)
        if g >= 2:
            se = math.sqrt(g / (g - 1) * sum(s * s for s in sums.values())) / n
            n_clusters = g
        # With a single cluster there is no between-cluster variation to estimate;
        # fall back to the naive SE (which then understates the uncertainty).
    return PairedDiff(
        diff=mean,
        se=se,
        low=max(-1.0, mean - z * se),
        high=min(1.0, mean + z * se),
        n=n,
        n_clusters=n_clusters,
    )


def minimum_detectable_effect(
    n: int,
    base_rate: float,
    discordance: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest paired change in pass rate a suite of `n` cases can reliably detect.

    Normal approximation to McNemar's test: with p_disc the expected share of cases
    whose outcome changes, the difference in pass rates has variance about p_disc / n
    under the null, so

        MDE = (z_{1−α/2} + z_{power}) · sqrt(p_disc / n)

    This assumes independent cases and a small effect relative to p_disc (the exact
    alternative variance is p_disc − MDE², so the formula slightly overstates the MDE).
    Without an observed `discordance`, p_disc = 2·p·(1−p) for base rate p: the share
    of changed cases if the two subjects failed independently, a conservative guess
    because real revisions agree far more often than that. The result is never below
    k/n, where k is the fewest one-directional changes the exact test can call
    significant (6 at α = 0.05), and never above 1.
    """
    if n < 0:
        raise InvalidInput(f"n={n}: the number of cases cannot be negative")
    if not 0.0 <= base_rate <= 1.0:
        raise InvalidInput(f"base_rate={base_rate}: must be between 0 and 1")
    if discordance is not None and not 0.0 <= discordance <= 1.0:
        raise InvalidInput(f"discordance={discordance}: must be between 0 and 1")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise InvalidInput(f"alpha={alpha}, power={power}: both must be strictly between 0 and 1")
    if n == 0:
        return 1.0
    p_disc = 2 * base_rate * (1 - base_rate) if discordance is None else discordance
    normal = NormalDist()
    mde = (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)) * math.sqrt(p_disc / n)
    # With few or no observed changes the formula gives ~0, yet the exact test needs at
    # least k changes all one way (two-sided p = 2·0.5^k ≤ α) before it finds anything.
    k_min = math.ceil(math.log2(2 / alpha) - 1e-12)
    return min(1.0, max(mde, k_min / n))


def agresti_min(fixed: int, broken: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Agresti–Min adjusted Wald interval for a paired difference (cand − base).

    Why: the Wald interval diff ± z·SE has SE 0 when no case changed, so "0 broken of 12"
    would prove a candidate harmless however small the suite, and with one or two changes it
    is far too narrow. Adding half a case to each of the four cells of the 2×2 table (both
    pass, fixed, broken, both fail) keeps the interval wide where the evidence is thin and
    covers close to 95 % even for small n (Agresti & Min, Statistics in Medicine 2005):

        n* = n + 2,  p_f = (fixed + ½)/n*,  p_b = (broken + ½)/n*,  d* = p_f − p_b
        Var = ((p_f + p_b) − d*²) / n*

    The cases are taken as independent; clipped to [-1, 1].
    """
    if n < 0 or fixed < 0 or broken < 0 or fixed + broken > n:
        raise InvalidInput(
            f"fixed={fixed}, broken={broken}, n={n}: need counts ≥ 0 and fixed + broken ≤ n"
        )
    n_adj = n + 2
    p_fixed = (fixed + 0.5) / n_adj
    p_broken = (broken + 0.5) / n_adj
    diff = p_fixed - p_broken
    half = z * math.sqrt(((p_fixed + p_broken) - diff * diff) / n_adj)
    return (max(-1.0, diff - half), min(1.0, diff + half))


def harm_bound(
    base: Sequence[bool],
    cand: Sequence[bool],
    clusters: Sequence[str] | None = None,
    z: float = Z95,
) -> float:
    """The lower 95 % bound of cand − base that the non-inferiority rule reads.

    The more conservative (lower) of the clustered Wald interval (`paired_difference`: it
    widens when a report's variants break together) and the Agresti–Min interval (it stays
    wide when few or no cases changed, where the Wald SE collapses).
    """
    paired = paired_difference(base, cand, clusters, z)
    fixed = sum(1 for b, c in zip(base, cand, strict=True) if c and not b)
    broken = sum(1 for b, c in zip(base, cand, strict=True) if b and not c)
    return min(paired.low, agresti_min(fixed, broken, len(base), z)[0])


def resolvable_breaks(n: int, margin: float, regression_p: float | None = None) -> int:
    """The most broken cases (none fixed) of n independent cases that still pass the rule.

    The rule: `harm_bound` ≥ −margin (and, given `regression_p`, no McNemar p below it).
    -1 when the suite is too small for the margin: even a candidate that changes nothing
    has a bound below −margin. With margin 0.10: 24 cases → 0, 48 cases → 1 (one broken
    case: bound −7.5 %; two: −10.7 %).
    """
    if n < 0:
        raise InvalidInput(f"n={n}: the number of cases cannot be negative")
    if not 0.0 < margin < 1.0:
        raise InvalidInput(f"margin={margin}: must be strictly between 0 and 1")

    def passes(k: int) -> bool:
        bound = harm_bound([True] * k + [False] * (n - k), [False] * n)
        if bound < -margin - 1e-12:
            return False
        return regression_p is None or k == 0 or mcnemar_exact(0, k) >= regression_p

    # The bound falls as k grows (and the McNemar p with it), so the largest passing k is
    # found by bisection: passes(lo) holds, passes(hi + 1) does not.
    if not passes(0):
        return -1
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


SMALL_SUITE_BREAKS = 1  # net broken cases a suite too small to resolve the margin allows


@dataclass(frozen=True)
class Allowance:
    """How a suite of n cases is judged at a margin, and how many broken cases it allows."""

    breaks: int  # the most broken cases (none fixed) that pass
    by_bound: bool  # judged by the 95 % bound (else by the observed net change)

    def describe(self, n: int, margin: float) -> str:
        cases = f"{n} case{'' if n == 1 else 's'}"
        if self.by_bound:
            return f"with {cases} this suite lets through at most {self.breaks} broken"
        return (
            f"with {cases} this suite cannot resolve a {margin:.0%} margin, so it is judged "
            f"by its observed change and lets through at most {self.breaks} broken"
        )


def allowance(n: int, margin: float, regression_p: float | None = None) -> Allowance:
    """The non-inferiority rule for a suite of n cases at `margin`.

    A suite that can tell one broken case from none (`resolvable_breaks` ≥ 1) is judged by
    the lower bound of the paired change. A smaller one cannot give evidence either way;
    it is judged by its observed net change (≥ −margin) and never allows more than
    `SMALL_SUITE_BREAKS` net broken cases, so the allowance never grows as a suite gets
    smaller or the margin stricter.
    """
    k = resolvable_breaks(n, margin, regression_p)
    if k >= 1:
        return Allowance(k, True)
    return Allowance(min(SMALL_SUITE_BREAKS, math.floor(margin * n + 1e-9)), False)


def net_change(fixed: int, broken: int, n: int) -> float:
    """The observed change in pass rate, (fixed − broken)/n, that small suites are judged by."""
    return (fixed - broken) / n if n else 0.0


def harm_passes(
    harm_low: float, fixed: int, broken: int, n: int, rule: Allowance, margin: float
) -> bool:
    """Whether a suite's harm (lost knowledge counted as broken) is within the margin."""
    if broken == 0:
        return True  # nothing lost here, whatever the suite's size
    if rule.by_bound:
        return harm_low >= -margin - 1e-12
    return broken - fixed <= rule.breaks and net_change(fixed, broken, n) >= -margin - 1e-12


@dataclass(frozen=True)
class Harm:
    """What the non-inferiority rule reads, on a pairing that counts lost knowledge.

    See `compare`: a case whose answer the base stated (even in the wrong form) and the
    candidate no longer states is broken here, though the strict checks may call it
    unchanged.
    """

    low: float  # lower 95 % bound of cand − base (`harm_bound`)
    broken: int  # strictly broken, or the base knew the answer and the candidate lost it
    fixed: int  # the base neither passed nor knew; the candidate passes


@dataclass(frozen=True)
class Comparison:
    fixed: list[str]  # case ids that failed under base and pass under cand
    broken: list[str]  # case ids that passed under base and fail under cand
    base_rate: float
    cand_rate: float
    n: int  # cases measured under both subjects
    paired: PairedDiff
    p_value: float  # exact McNemar
    mde: float  # minimum detectable effect at α = 0.05, power 0.8
    harm: Harm  # what the non-inferiority rule reads

    def as_dict(self) -> dict[str, Any]:
        """The comparison as JSON-ready plain data."""
        return asdict(self)


def compare(
    base: dict[str, bool],
    cand: dict[str, bool],
    clusters: dict[str, str] | None = None,
    base_knew: dict[str, bool] | None = None,
    cand_knew: dict[str, bool] | None = None,
) -> Comparison:
    """Compare two subjects' outcomes (case id → passed) on the cases both measured.

    `base_knew`, `cand_knew` (case id → the output states the expected answer, see
    `checks.lenient`) make the pairing of `harm`: the base passes a case it passed or
    knew; the candidate passes what it passed, and, where the base only knew the answer,
    also what it still states. So an answer lost is a broken case, an unchanged candidate
    changes nothing, and a wrong-form answer never counts as a fix. Fixed, broken and
    McNemar's p stay strict.
    """
    ids = sorted(base.keys() & cand.keys())
    n = len(ids)
    b = [base[i] for i in ids]
    c = [cand[i] for i in ids]
    fixed = [i for i in ids if cand[i] and not base[i]]
    broken = [i for i in ids if base[i] and not cand[i]]
    # A case without a cluster (e.g. added by hand, no source report) is its own cluster;
    # the NUL prefix keeps its key from colliding with a real cluster name.
    keys = [clusters.get(i, "\0" + i) for i in ids] if clusters is not None else None
    base_rate = sum(b) / n if n else 0.0
    bk, ck = base_knew or {}, cand_knew or {}
    knew_only = [not base[i] and bk.get(i, False) for i in ids]  # known, in the wrong form
    harm_base = [x or k for x, k in zip(b, knew_only, strict=True)]
    harm_cand = [x or (k and ck.get(i, False)) for i, x, k in zip(ids, c, knew_only, strict=True)]
    discordance = (len(fixed) + len(broken)) / n if n else None
    return Comparison(
        fixed=fixed,
        broken=broken,
        base_rate=base_rate,
        cand_rate=sum(c) / n if n else 0.0,
        n=n,
        paired=paired_difference(b, c, keys),
        p_value=mcnemar_exact(len(fixed), len(broken)),
        mde=minimum_detectable_effect(n, base_rate, discordance),
        harm=Harm(
            low=harm_bound(harm_base, harm_cand, keys),
            broken=sum(1 for x, y in zip(harm_base, harm_cand, strict=True) if x and not y),
            fixed=sum(1 for x, y in zip(harm_base, harm_cand, strict=True) if y and not x),
        ),
    )
