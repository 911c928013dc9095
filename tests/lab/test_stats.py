"""The verdict rule (normlab.lab.stats): its arithmetic by hand, and its error rates on simulated experiments."""

import math

import numpy as np
import pytest

from normlab.lab import stats
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED


def test_t_quantiles_against_tables():
    # one-sided upper quantiles of Student's t, as printed in every table
    table = {(0.975, 2): 4.303, (0.975, 10): 2.228, (0.95, 9): 1.833, (0.95, 18): 1.734, (0.99, 38): 2.429}
    for (q, df), value in table.items():
        _, low, _, se, got_df = stats.interval(0.0, 1.0, df + 1, 0.0, 0.0, math.inf, 1 - q, 1 - q)
        assert float(got_df) == pytest.approx(df)
        assert -float(low) / float(se) == pytest.approx(value, abs=1e-3)


def test_welch_by_hand():
    a, b = [10.0, 12.0, 11.0, 13.0], [1.0, 2.0, 3.0]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    d, low, high, se, got_df = stats.interval(np.mean(a), np.var(a, ddof=1), 4, np.mean(b), np.var(b, ddof=1), 3, 0.05, 0.01)
    assert float(got_df) == pytest.approx(df) and float(se) == pytest.approx(math.sqrt(va + vb))
    from scipy.stats import t

    assert float(low) == pytest.approx(d - t.ppf(0.95, df) * math.sqrt(va + vb))
    assert float(high) == pytest.approx(d + t.ppf(0.99, df) * math.sqrt(va + vb))


def test_resolution_floors_the_standard_error():
    # every seed on the same grid point: no spread, yet the mean is known only to within its cell
    d, low, high, se, _ = stats.interval(1.0, 0.0, 10, 0.5, 0.0, 10, 0.05, 0.05, 0.5, 0.5)
    assert float(se) == pytest.approx(math.sqrt(2 * 0.5**2 / 12))
    assert float(low) < 1.0 - 0.5 < float(high)
    # a spread wider than the floor is left alone
    _, _, _, se, _ = stats.interval(1.0, 4.0, 10, 0.5, 4.0, 10, 0.05, 0.05, 0.5, 0.5)
    assert float(se) == pytest.approx(math.sqrt(2 * 4.0 / 10))


def test_classify():
    assert stats.classify(0.5, 3.0, 0.0, 1.0) == 1  # above the threshold, not below the smallest effect
    assert stats.classify(-2.0, 0.5, 0.0, 1.0) == 2  # below the smallest effect of interest: absent
    assert stats.classify(0.1, 0.9, 0.0, 1.0) == 2  # real but too small to matter: the equivalence zone decides
    assert stats.classify(-0.5, 1.5, 0.0, 1.0) == 0
    assert stats.classify(float("nan"), float("nan"), 0.0, 1.0) == 0


@pytest.mark.parametrize(
    "claimed, against, smallest, expected",
    [
        ([10, 11, 12, 10, 11], [1, 2, 3, 2, 1], 1, REPRODUCED),
        ([1, 2, 3, 2, 1], [10, 11, 12, 10, 11], 1, NOT_REPRODUCED),  # reversed
        ([5, 1, 9, 4, 6], [4, 2, 7, 5, 3], 1, INCONCLUSIVE),  # within the noise
        ([3.0, 3.1, 2.9, 3.0], [3.0, 3.05, 2.95, 3.0], 1, NOT_REPRODUCED),  # no effect, tightly measured: absent
        ([2.0, 2.1, 2.2], 1.0, 0.1, REPRODUCED),  # against a fixed number
        ([0.9, 1.0, 1.1], 1.0, 0.1, INCONCLUSIVE),
        ([10], [1], 1, INCONCLUSIVE),  # one seed measures no noise
    ],
)
def test_decide(claimed, against, smallest, expected):
    v = stats.decide(stats.compare(claimed, against, what="effect", smallest=smallest))
    assert v.verdict == expected, v.explanation
    assert v.explanation.startswith("effect: ") and v.explanation.endswith(expected)
    (part,) = v.parts
    assert part.n[0] == len(claimed) and part.as_dict()["verdict"] == expected


def test_the_report_line_shows_effect_interval_n_and_margin():
    v = stats.decide(stats.compare([10, 11, 12], [1, 2, 3], what="steps saved", smallest=2, unit="steps"))
    text = v.parts[0].text()
    assert text.startswith("steps saved: 9 steps, 90.0% interval [") and "n = 3 + 3" in text
    assert "needs > 0, smallest effect of interest 2" in text


def test_parts_and_looks_split_alpha():
    assert stats.alphas(looks=3, parts=2) == pytest.approx((0.05 / 3, 0.05 / 6))
    c = stats.compare([1.0, 1.2, 1.4, 1.1], [0.0, 0.1, 0.2, 0.1], what="x", smallest=0.1)
    one, later = stats.decide([c, c], look=1, looks=1), stats.decide([c, c], look=2, looks=3)
    assert later.parts[0].low < one.parts[0].low and later.parts[0].high > one.parts[0].high  # wider at each look
    assert one.parts[0].level == pytest.approx(1 - 0.05 - 0.025)
    r, n = stats.compare([5, 6, 7], [0, 1, 2], what="a", smallest=1), stats.compare([0, 1, 2], [5, 6, 7], what="b", smallest=1)
    i = stats.compare([5, 1, 9], [4, 2, 7], what="c", smallest=1)
    assert stats.decide([r, r]).verdict == REPRODUCED
    assert stats.decide([r, i]).verdict == INCONCLUSIVE
    assert stats.decide([i, n]).verdict == NOT_REPRODUCED and "[not reproduced]" in stats.decide([i, n]).explanation
    with pytest.raises(ValueError, match="look must lie in 1..3"):
        stats.decide(r, look=4, looks=3)
    with pytest.raises(ValueError, match="smallest effect of interest must be positive"):
        stats.compare([1], [2], what="x", smallest=0)


# --- the error rates, on simulated experiments whose truth is known ------------------------------
# 20000 experiments: a rate's Monte-Carlo standard error is at most 0.0035 near 5%; the bounds
# below allow three of them.

MC = 3 * math.sqrt(0.05 * 0.95 / 20000)


@pytest.mark.parametrize("sd_against", [1.0, 3.0])  # equal and very unequal spreads (Welch)
def test_false_reproduced_at_most_alpha_one_look(sd_against):
    null = stats.simulate(0.0, smallest=1.0, rounds=(10,), sd_against=sd_against)
    assert null[REPRODUCED] <= stats.ALPHA + MC
    assert null[REPRODUCED] > stats.ALPHA / 2  # the quantile is right, not merely conservative
    at_smallest = stats.simulate(1.0, smallest=1.0, rounds=(10,), sd_against=sd_against)
    assert at_smallest[NOT_REPRODUCED] <= stats.ALPHA + MC


@pytest.mark.parametrize("rounds", [(10, 20, 40), (20, 40)])
def test_error_rates_hold_over_the_rounds(rounds):
    null = stats.simulate(0.0, smallest=1.0, rounds=rounds)
    assert null[REPRODUCED] <= stats.ALPHA + MC and null[INCONCLUSIVE] < 0.01
    at_smallest = stats.simulate(1.0, smallest=1.0, rounds=rounds)
    assert at_smallest[NOT_REPRODUCED] <= stats.ALPHA + MC
    # power: an effect of one standard deviation is found in at least 95% of experiments (docs/claims.md)
    assert at_smallest[REPRODUCED] >= 0.95
    assert stats.simulate(2.0, smallest=1.0, rounds=rounds)["seeds"] == pytest.approx(rounds[0], rel=0.05)


def test_several_parts_keep_the_claim_at_alpha():
    # the not-reproduced side of each of 3 parts is at alpha / 3, so the claim's false not-reproduced is at most alpha
    part = stats.simulate(1.0, smallest=1.0, rounds=(10, 20, 40), parts=3)
    assert part[NOT_REPRODUCED] <= stats.ALPHA / 3 + MC


def test_quantized_values_do_not_fake_certainty():
    # values on a coarse grid (step 1, a third of the spread and less): the floor keeps the false rate
    for sd in (0.1, 0.3, 1.0):
        null = stats.simulate(0.0, smallest=1.0, rounds=(10, 20, 40), sd=sd, resolution=1.0)
        assert null[REPRODUCED] <= stats.ALPHA + MC, sd
    # without the floor, every seed on one grid point would be certain of whatever difference the grid shows
    d, low, high, se, _ = stats.interval(1.0, 0.0, 10, 0.0, 0.0, 10, 0.05, 0.05)
    assert float(low) == float(high) == 1.0


def test_fixed_numbers_on_both_sides_are_said_to_be_exact():
    """A count against a source's count: no seeds on either side, so no interval and no n to print."""
    verdict = stats.decide([stats.compare(3841.5, 3841, what="total parameters", smallest=0.5)])
    assert verdict.verdict == stats.REPRODUCED
    assert verdict.explanation.startswith("total parameters: 0.5, exact (no seeds); the claim needs > 0")
    assert "n = " not in verdict.explanation and "interval" not in verdict.explanation
