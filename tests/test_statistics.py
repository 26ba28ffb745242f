"""cgh_tf.statistics against closed forms, hand computations, float64 NumPy and scipy.stats."""

import math

import numpy as np
import pytest

from cgh_tf import statistics as st


@pytest.mark.parametrize("t", [-7.0, -1.3, -0.2, 0.0, 0.4, 2.0, 12.706])
def test_t_cdf_matches_the_closed_forms_for_1_2_and_3_degrees_of_freedom(t):
    cauchy = 0.5 + math.atan(t) / math.pi
    df2 = 0.5 + t / (2.0 * math.sqrt(2.0 + t * t))
    df3 = 0.5 + (t / (math.sqrt(3.0) * (1.0 + t * t / 3.0)) + math.atan(t / math.sqrt(3.0))) / math.pi
    assert st.t_cdf(t, 1) == pytest.approx(cauchy, abs=1e-13)
    assert st.t_cdf(t, 2) == pytest.approx(df2, abs=1e-13)
    assert st.t_cdf(t, 3) == pytest.approx(df3, abs=1e-13)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_inverts_the_closed_forms(p):
    assert st.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert st.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)),
                                                rel=1e-10)
    # printed tables (two-sided 95 %): df 4 -> 2.776, df 30 -> 2.042; large df -> normal
    assert st.t_quantile(0.975, 4) == pytest.approx(2.7764451, abs=1e-6)
    assert st.t_quantile(0.975, 30) == pytest.approx(2.0422725, abs=1e-6)
    assert st.t_quantile(0.975, 10**7) == pytest.approx(st.normal_quantile(0.975), abs=1e-5)


def test_summarize_is_mean_and_sample_sd_of_the_present_values():
    s = st.summarize([1.0, None, 2.0, float("nan"), 6.0])
    assert (s.mean, s.n) == (3.0, 3)
    assert s.sd == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1), rel=1e-15)
    assert st.summarize([5.0]).sd is None and st.summarize([]).mean is None
    assert st.summarize([1.0, 3.0]).text(".1f") == "2.0 ± 1.4"


def test_paired_difference_by_hand_pairs_by_seed_and_drops_missing_seeds():
    arm = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0, 4: None}
    control = {0: 0.5, 1: 1.0, 2: 2.5, 4: 1.0, 5: 3.0}   # seed 3, 4 and 5 unpaired
    d = st.paired_difference(arm, control)
    assert d.seeds == (0, 1, 2) and d.differences == (0.5, 1.0, 1.5)
    half = 4.302652729749464 * 0.5 / math.sqrt(3)   # t_{.975, 2} sd / sqrt(n), sd = 0.5
    assert (d.mean, d.sd, d.n) == (1.0, 0.5, 3)
    assert d.low == pytest.approx(1.0 - half, rel=1e-10)
    assert d.high == pytest.approx(1.0 + half, rel=1e-10)
    assert d.t == pytest.approx(1.0 / (0.5 / math.sqrt(3)), rel=1e-12)
    assert d.d_z == pytest.approx(2.0, rel=1e-12)
    assert not d.excludes_zero()  # t = 3.46 < 4.30: three seeds do not decide this
    assert d.method == "Student t, paired by seed"


def test_paired_difference_with_one_seed_or_zero_spread_has_no_t():
    one = st.paired_difference({0: 2.0}, {0: 1.0})
    assert one.mean == 1.0 and one.low is None and not one.excludes_zero()
    flat = st.paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert (flat.low, flat.high, flat.t, flat.d_z) == (1.0, 1.0, None, None)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits, trials = 0, 4000
    for _ in range(trials):
        control = rng.normal(size=3)
        arm = control + 0.3 + rng.normal(scale=0.5, size=3)
        d = st.paired_difference(dict(enumerate(arm)), dict(enumerate(control)))
        hits += d.low <= 0.3 <= d.high
    assert abs(hits / trials - 0.95) < 0.012   # binomial sd 0.0034


def test_correlation_is_numpy_pearson_with_the_fisher_z_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    y = 0.5 * x + rng.normal(size=20)
    c = st.correlation(list(x) + [None], list(y) + [1.0])
    r = np.corrcoef(x, y)[0, 1]
    assert c.n == 20 and c.r == pytest.approx(r, rel=1e-12)
    half = 1.959963984540054 / math.sqrt(17)
    assert c.low == pytest.approx(math.tanh(math.atanh(r) - half), rel=1e-9)
    assert c.high == pytest.approx(math.tanh(math.atanh(r) + half), rel=1e-9)
    assert st.correlation([1, 2], [3, 4]).r is None
    assert st.correlation([1, 2, 3], [1, 1, 1]).r is None
    assert st.correlation([1, 2, 3], [1, 3, 2]).low is None   # n < 4: no interval


def test_paired_rule_produces_the_verdict_text_from_the_interval():
    rule = st.PairedRule("m3 suppresses", "corrupted_acc", "m3", "sgd", prediction="lower")
    effect = rule.evaluate({0: 0.1, 1: 0.2, 2: 0.15}, {0: 0.5, 1: 0.55, 2: 0.52})
    assert effect.decided and effect.text.startswith("effect (m3 lower)")
    assert effect.text.endswith("as predicted")
    none = rule.evaluate({0: 0.1, 1: 0.6, 2: 0.3}, {0: 0.5, 1: 0.2, 2: 0.35})
    assert not none.decided and none.text.startswith("no detectable effect")
    opposite = rule.evaluate({0: 0.6, 1: 0.7, 2: 0.65}, {0: 0.5, 1: 0.55, 2: 0.52})
    assert "OPPOSITE" in opposite.text
    assert rule.evaluate({0: 0.1}, {0: 0.5}).text.startswith("undetermined")
    assert "excludes 0" in rule.statement()
    with pytest.raises(ValueError, match="prediction='up'"):
        st.PairedRule("x", "m", "a", "b", prediction="up")


def test_outcome_classifies_every_verdict_the_rules_produce():
    paired = st.PairedRule("p", "m", "a", "b", prediction="lower")
    unpredicted = st.PairedRule("u", "m", "a", "b")
    low, high, mixed = {0: 0.1, 1: 0.2, 2: 0.15}, {0: 0.5, 1: 0.55, 2: 0.52}, {0: 0.6, 1: 0.1, 2: 0.3}
    cases = [(paired.evaluate(low, high), "as predicted"),
             (paired.evaluate(high, low), "opposite to the prediction"),
             (unpredicted.evaluate(low, high), "effect, no prediction"),
             (paired.evaluate(mixed, high), "no detectable effect"),
             (paired.evaluate({0: 0.1}, {0: 0.5}), "undetermined"),
             (st.CorrelationRule("c", "x", "y", "negative").evaluate(
                 np.arange(10.0), -np.arange(10.0) + np.sin(np.arange(10.0))), "as predicted"),
             (st.CorrelationRule("c", "x", "y", "positive").evaluate(
                 np.arange(10.0), -np.arange(10.0) + np.sin(np.arange(10.0))),
              "opposite to the prediction")]
    for verdict, expected in cases:
        assert st.outcome({"decided": verdict.decided, "text": verdict.text}) == expected, verdict


def test_paired_rule_within_one_arm_names_the_two_metrics():
    rule = st.PairedRule("f", "fp", "noise25", "noise25", prediction="higher",
                         control_metric="null")
    verdict = rule.evaluate({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.5, 1: 0.55, 2: 0.52})
    assert "noise25: fp − null = " in verdict.text and "noise25 − noise25" not in verdict.text


def test_correlation_rule_verdicts():
    rule = st.CorrelationRule("coh vs gap", "coherence", "gap", prediction="negative")
    x = np.arange(10.0)
    decided = rule.evaluate(x, -x + np.sin(x))
    assert decided.decided and "as predicted" in decided.text
    assert not rule.evaluate([1, 2, 3], [3, 1, 2]).decided


def test_linear_fit_matches_numpy_polyfit_and_the_standard_errors_by_hand():
    rng = np.random.default_rng(2)
    x = np.repeat([1.0, 2.0, 3.0, 4.0], 3)
    y = 0.3 - 0.2 * x + rng.normal(scale=0.1, size=len(x))
    fit = st.linear_fit(x, y, x0=10.0)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit["slope"] == pytest.approx(slope, rel=1e-12)
    assert fit["intercept"] == pytest.approx(intercept, rel=1e-12)
    resid = y - (intercept + slope * x)
    s2 = resid @ resid / (len(x) - 2)
    sxx = np.sum((x - x.mean()) ** 2)
    assert fit["slope_se"] == pytest.approx(math.sqrt(s2 / sxx), rel=1e-12)
    se = math.sqrt(s2 * (1 / len(x) + (10.0 - x.mean()) ** 2 / sxx))
    assert fit["predicted_se"] == pytest.approx(se, rel=1e-12)
    t = 2.2281388519649385   # t_{.975, 10}
    assert fit["predicted_interval"][1] == pytest.approx(fit["predicted"] + t * se, rel=1e-9)
    assert st.linear_fit([1, 1, 1], [1, 2, 3], 2) is None and st.linear_fit([1, 2], [1, 2], 3) is None


def test_correlation_and_linear_fit_are_the_same_to_the_bit_in_any_order():
    """Exactly rounded sums: a committed result re-derived under another NumPy / BLAS (whose dot
    products sum in another order) gives the same bits; a permutation of the points stands in."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=200) * 1e3 + 1e6          # large offset: order matters for plain sums
    y = 0.5 * x + rng.normal(size=200) * 1e2
    order = rng.permutation(200)
    assert st.correlation(x, y) == st.correlation(x[order], y[order])
    assert st.linear_fit(x, y, 1e6) == st.linear_fit(x[order], y[order], 1e6)
    assert st.correlation(x, y).r == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-13)


# ---------------------------------------------------------------------------- p-values, Holm

def _holm_by_definition(p):
    """p_holm(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) on the sorted p's, written out."""
    order = np.argsort(p, kind="stable")
    m, out = len(p), np.empty(len(p))
    for i in range(m):
        out[order[i]] = max(min(1.0, (m - j) * p[order[j]]) for j in range(i + 1))
    return list(out)


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_p_is_scipy_one_sample_t_test_of_the_differences(n):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n)
    for shift in (0.0, 0.3, 1.5):
        arm, control = rng.normal(shift, 1.0, size=n), rng.normal(size=n)
        d = st.paired_difference(dict(enumerate(arm)), dict(enumerate(control)))
        reference = scipy_stats.ttest_1samp(arm - control, 0.0)
        assert d.t == pytest.approx(reference.statistic, rel=1e-12)
        assert d.p == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)


def test_correlation_p_is_the_normal_tail_of_fisher_z():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n, slope in ((4, 0.2), (7, 1.0), (30, 0.1), (30, 3.0)):
        x = rng.normal(size=n)
        y = slope * x + rng.normal(size=n)
        c = st.correlation(x, y)
        z = math.atanh(np.corrcoef(x, y)[0, 1]) * math.sqrt(n - 3)
        assert c.p == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), rel=1e-12)
    assert st.correlation([1, 2, 3], [1, 3, 2]).p is None   # n < 4: no interval, no p


def test_p_below_one_minus_level_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(4)
    for trial in range(1500):
        n, level = int(rng.integers(2, 7)), (0.9, 0.95, 0.99)[trial % 3]
        arm = rng.normal(rng.normal(0, 1.5), rng.uniform(0.1, 2), size=n)
        d = st.paired_difference(dict(enumerate(arm)), dict(enumerate(np.zeros(n))), level)
        assert (d.p < 1 - level) == d.excludes_zero(), (arm, level, d.p)
        x = rng.normal(size=n + 3)
        c = st.correlation(x, rng.normal(0, 1) * x + rng.normal(size=n + 3), level)
        assert (c.p < 1 - level) == c.excludes_zero(), (x, level, c.p)


def test_p_of_a_zero_spread_difference_is_0_or_1():
    shifted = st.paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert shifted.p == 0.0 and shifted.excludes_zero()
    same = st.paired_difference({0: 2.0, 1: 3.0}, {0: 2.0, 1: 3.0})
    assert same.p == 1.0 and not same.excludes_zero()
    assert st.paired_difference({0: 2.0}, {0: 1.0}).p is None


def test_holm_by_hand_ties_zero_single_and_missing():
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.02, 0.02]) == [0.04, 0.04]                 # ties: the same adjusted p
    assert st.holm([0.0, 0.5]) == [0.0, 0.5]
    assert st.holm([0.037]) == [0.037]                           # m = 1: no change
    assert st.holm([None, 0.01, 0.02]) == [None, 0.02, 0.02]     # None: not counted in m
    assert st.holm([0.6, 0.7]) == [1.0, 1.0]                     # capped at 1
    with pytest.raises(ValueError, match=r"p=1.5 must be in \[0, 1\]"):
        st.holm([0.1, 1.5])


def test_holm_matches_its_definition_on_random_families():
    rng = np.random.default_rng(5)
    for m in (1, 2, 3, 8, 20):
        p = rng.uniform(0, 0.2, size=m) ** 2
        p[rng.integers(m)] = p[0]                                # a tie in most families
        assert st.holm(list(p)) == pytest.approx(_holm_by_definition(p), rel=1e-15)


def test_family_wise_verdicts_their_sentences_and_tally():
    rule = st.PairedRule("r", "m", "a", "b", prediction="higher")
    strong = rule.evaluate({0: 1.0, 1: 1.1, 2: 1.2, 3: 1.05}, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})
    weak = rule.evaluate({0: 0.3, 1: 0.7, 2: 0.55}, {0: 0.0, 1: 0.1, 2: 0.1})  # p = 0.035
    null = rule.evaluate({0: 0.3, 1: -0.6, 2: 0.5}, {0: 0.0, 1: 0.1, 2: 0.1})
    lone = rule.evaluate({0: 1.0}, {0: 0.0})
    family = st.family_wise([v.entry("s") for v in (strong, weak, null, lone)])
    p = [v["p"] for v in family]
    assert p[3] is None and [v["decided"] for v in family] == [True, True, False, False]
    assert [v["p_holm"] for v in family[:3]] == pytest.approx(_holm_by_definition(p[:3]))
    assert family[0]["p_holm"] == pytest.approx(3 * p[0])       # the smallest p, times m = 3
    assert [v["survives_holm"] for v in family] == [True, False, False, False]
    assert st.holm_text(family[1], family) == (
        f"p = {p[1]:.3g}, Holm over 3 rules: p = {family[1]['p_holm']:.3g}, not significant")
    assert st.holm_text(family[0], family).endswith(", significant")
    assert st.holm_text(family[3], family) == "no p (not in the Holm family)"
    assert st.family_tally(family) == "2 decided at 95 %, 1 survives Holm over 3"
    c = st.CorrelationRule("c", "x", "y", prediction="negative")
    assert c.evaluate(np.arange(10.0), -np.arange(10.0) + np.sin(np.arange(10.0))).entry("s")[
        "p"] < 1e-6 and "excludes 0; predicted negative" in c.statement()


def test_holm_holds_the_family_wise_error_rate_where_the_unadjusted_rules_do_not():
    """2,000 families of m = 10 true-null paired rules with 3 seeds: any decided effect in about
    40 % of the families unadjusted (1 − 0.95^10), in at most 5 % after Holm."""
    rng = np.random.default_rng(6)
    unadjusted = adjusted = 0
    for _ in range(2000):
        draws = rng.normal(size=(10, 3))
        family = [st.paired_difference(dict(enumerate(d)), dict(enumerate(np.zeros(3))))
                  for d in draws]
        unadjusted += any(d.excludes_zero() for d in family)
        adjusted += any(p < 0.05 for p in st.holm([d.p for d in family]))
    assert abs(unadjusted / 2000 - (1 - 0.95 ** 10)) < 0.035   # binomial sd 0.011
    assert adjusted / 2000 < 0.05 + 0.015                      # binomial sd 0.005
