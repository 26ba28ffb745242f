r"""Statistics of experiments over seeds: summaries, paired differences, correlations, verdicts.

Everything is float64 NumPy / `math`, no SciPy. Intervals are two-sided at `level` (default 95 %).

| function / class                        | what                                                        |
|-----------------------------------------|-------------------------------------------------------------|
| `summarize(values)`                     | `Summary`: mean, sample sd (ddof 1), n of the non-missing values |
| `paired_difference(arm, control)`       | `PairedDifference`: arm − control paired by seed: mean, sd, Student-t CI, t, d_z |
| `correlation(x, y)`                     | `Correlation`: Pearson r with its Fisher-z CI               |
| `linear_fit(x, y, x0)`                  | least squares y = a + b x: slope ± SE, fitted mean at x0 ± SE with its t interval |
| `t_cdf(t, df)`, `t_quantile(p, df)`     | Student t distribution (regularized incomplete beta; bisection) |
| `normal_quantile(p)`                    | standard normal quantile                                   |
| `PairedRule`, `CorrelationRule`         | verdict rules declared before the runs; `.evaluate(...)` → `Verdict` |
| `holm(p_values)`, `family_wise(verdicts)` | Holm's step-down adjustment of a family of p-values; a run's verdicts with it |

Pairing: arm and control values are dicts `{seed: value}`; only seeds present (and not None /
NaN) in both are paired, and the result says how many were. The paired CI is
mean(d) ± t_{(1+level)/2, n−1} · sd(d) / √n (Student t, n − 1 degrees of freedom), which assumes
the per-seed differences are independent draws of one distribution; with n = 2 the t quantile
is 12.71, so two seeds almost never decide anything. d_z = mean(d) / sd(d) (Cohen's paired
effect size). The correlation CI is tanh(atanh(r) ± z_{(1+level)/2} / √(n − 3)) (Fisher z,
normal approximation; needs n ≥ 4).

p-values are two-sided and the duals of the intervals: p = P(|T_{n−1}| ≥ |t|) for a paired
difference (sd = 0: p = 0 when the mean is not 0, else 1), p = P(|Z| ≥ |atanh(r)|·√(n − 3)) for
a correlation, so p < 1 − level exactly when the interval excludes 0 (up to the 1e-12 of
`t_quantile`'s bisection); no interval, no p. A run's declared rules are one family: Holm's
step-down (Holm 1979) adjusts their p-values, p_holm(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))
over the m sorted p's (rules without a p — undetermined — are not counted in m), and a decided
effect survives when p_holm < 1 − level. It controls the family-wise error rate (the chance of any
false decision among the m rules) at 1 − level under any dependence between the rules.
"""

import dataclasses
import functools
import math
from statistics import NormalDist

import numpy as np

T_METHOD = "Student t, paired by seed"
FISHER_METHOD = "Pearson r, Fisher z interval"


def _clean(values):
    """float64 array of the values that are neither None nor NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return np.asarray(kept, dtype=np.float64)


def _mean(values) -> float:
    """The mean of `values` from their exactly rounded sum (`math.fsum`): every sum here is, so
    a statistic is the same to the bit whatever NumPy's / BLAS' summation order."""
    return math.fsum(values) / len(values)


@dataclasses.dataclass(frozen=True)
class Summary:
    """mean and sample sd (ddof = 1) over the n non-missing values; sd None for n < 2, mean None
    for n = 0."""

    mean: float
    sd: float
    n: int

    def text(self, fmt=".3f"):
        if self.mean is None:
            return "n/a"
        return format(self.mean, fmt) + ("" if self.sd is None else f" ± {format(self.sd, fmt)}")


def summarize(values) -> Summary:
    """`Summary` of a sequence of numbers (None / NaN are missing)."""
    x = _clean(values)
    if len(x) == 0:
        return Summary(None, None, 0)
    mean = _mean(x)
    sd = math.sqrt(math.fsum((x - mean) ** 2) / (len(x) - 1)) if len(x) > 1 else None
    return Summary(mean, sd, len(x))


# ---------------------------------------------------------------------------- distributions

def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _betainc(a, b, x):
    """Regularized incomplete beta I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df={df!r} must be > 0")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p, df):
    """The t with P(T <= t) = p (0 < p < 1), by bisection on `t_cdf` to 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2),
    without the cancellation of 1 − cdf."""
    if df <= 0:
        raise ValueError(f"df={df!r} must be > 0")
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def normal_quantile(p):
    """The z with Φ(z) = p (standard normal)."""
    return NormalDist().inv_cdf(p)


# ---------------------------------------------------------------------------- comparisons

@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """arm − control over the n seeds present in both: mean, sd of the differences, the `level`
    interval (`T_METHOD`), t = mean / (sd / √n), d_z = mean / sd, the two-sided p of t (n − 1
    dof); interval / t / d_z / p None for n < 2 (t and d_z also for sd = 0, where p is 0 or 1).
    `seeds`: the paired seeds, `differences`: per seed."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    t: float
    d_z: float
    level: float
    seeds: tuple
    differences: tuple
    p: float = None
    method: str = T_METHOD

    def excludes_zero(self):
        return self.low is not None and (self.low > 0 or self.high < 0)

    def text(self, fmt=".3f"):
        if self.mean is None:
            return "n/a (no paired seeds)"
        if self.low is None:
            return f"{format(self.mean, fmt)} (n = {self.n}, no interval)"
        return (f"{format(self.mean, fmt)} [{format(self.low, fmt)}, {format(self.high, fmt)}]"
                f" (n = {self.n})")

    def as_dict(self):
        return dataclasses.asdict(self)


def paired_difference(arm, control, level=0.95) -> PairedDifference:
    """`PairedDifference` of arm − control; arm / control: `{seed: value}` (None / NaN missing)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must be in (0, 1)")
    seeds = tuple(sorted(s for s in arm if s in control
                         and len(_clean([arm[s], control[s]])) == 2))
    d = np.asarray([float(arm[s]) - float(control[s]) for s in seeds], dtype=np.float64)
    stats = summarize(d)
    low = high = t = d_z = p = None
    if stats.n >= 2:
        half = t_quantile(0.5 + level / 2.0, stats.n - 1) * stats.sd / math.sqrt(stats.n)
        low, high = stats.mean - half, stats.mean + half
        p = float(stats.mean == 0)
        if stats.sd > 0:
            t = stats.mean / (stats.sd / math.sqrt(stats.n))
            d_z = stats.mean / stats.sd
            p = t_two_sided_p(t, stats.n - 1)
    return PairedDifference(stats.mean, stats.sd, stats.n, low, high, t, d_z, level, seeds,
                            tuple(float(v) for v in d), p)


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Pearson r of n pairs with its `level` interval (`FISHER_METHOD`; None for n < 4 or |r| = 1)
    and the two-sided p of z = atanh(r)·√(n − 3) (None when the interval is); r None for n < 3 or
    a constant side."""

    r: float
    n: int
    low: float
    high: float
    level: float
    method: str = FISHER_METHOD
    p: float = None

    def excludes_zero(self):
        return self.low is not None and (self.low > 0 or self.high < 0)

    def text(self, fmt=".2f"):
        if self.r is None:
            return f"n/a (n = {self.n})"
        interval = ("no interval" if self.low is None
                    else f"[{format(self.low, fmt)}, {format(self.high, fmt)}]")
        return f"r = {format(self.r, fmt)} {interval} (n = {self.n})"


def _centred(values):
    """float64 `values` minus their `_mean`."""
    values = np.asarray(values, dtype=np.float64)
    return values - _mean(values)


def correlation(x, y, level=0.95) -> Correlation:
    """Pearson `Correlation` of the pairs (x_i, y_i) where neither is None / NaN."""
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    pairs = [(a, b) for a, b in zip(x, y) if len(_clean([a, b])) == 2]
    n = len(pairs)
    if n < 3:
        return Correlation(None, n, None, None, level)
    a, b = (_centred(v) for v in zip(*pairs))
    denominator = math.sqrt(math.fsum(a * a) * math.fsum(b * b))
    if denominator == 0:
        return Correlation(None, n, None, None, level)
    r = max(-1.0, min(1.0, math.fsum(a * b) / denominator))
    if n < 4 or abs(r) == 1.0:
        return Correlation(r, n, None, None, level)
    half = normal_quantile(0.5 + level / 2.0) / math.sqrt(n - 3)
    z = math.atanh(r)
    p = math.erfc(abs(z) * math.sqrt(n - 3) / math.sqrt(2.0))
    return Correlation(r, n, math.tanh(z - half), math.tanh(z + half), level, p=p)


def linear_fit(x, y, x0, level=0.95):
    """Least squares y = a + b·x over the points (x_i, y_i), and the fitted mean at x0.

    Returns a dict: `slope` b and its standard error `slope_se` = s / √Sxx, `intercept`, the
    fitted value `predicted` at x0 with `predicted_se` = s·√(1/N + (x0 − x̄)² / Sxx) and its
    `level` Student-t interval `predicted_interval` (N − 2 dof), `dof`, `r2` (None for constant
    y), `points`. None for fewer than 3 points or fewer than 2 distinct x."""
    x, v = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or len(np.unique(x)) < 2:
        return None
    xm, vm = _mean(x), _mean(v)
    dx, dv = x - xm, v - vm
    sxx = math.fsum(dx ** 2)
    slope = math.fsum(dx * dv) / sxx
    intercept = vm - slope * xm
    resid = v - (intercept + slope * x)
    dof = len(x) - 2
    s2 = math.fsum(resid ** 2) / dof
    pred = intercept + slope * x0
    se_pred = math.sqrt(s2 * (1.0 / len(x) + (x0 - xm) ** 2 / sxx))
    sst = math.fsum(dv ** 2)
    t = t_quantile(0.5 + level / 2.0, dof)
    return {"slope": slope, "slope_se": math.sqrt(s2 / sxx), "intercept": intercept,
            "predicted": pred, "predicted_se": se_pred,
            "predicted_interval": (pred - t * se_pred, pred + t * se_pred), "dof": dof,
            "r2": (1.0 - math.fsum(resid ** 2) / sst) if sst > 0 else None,
            "points": len(x)}


# ---------------------------------------------------------------------------- verdict rules

@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of a rule: `decided` (the interval excludes 0), the sentence, the statistic."""

    rule: str
    decided: bool
    text: str
    statistic: dict

    def entry(self, statement):
        """The verdict as results.json stores it, before the family-wise step (`family_wise`):
        {rule, statement, decided, text, p, level}."""
        return {"rule": self.rule, "statement": statement, "decided": self.decided,
                "text": self.text, "p": self.statistic["p"], "level": self.statistic["level"]}


AS_PREDICTED = "; as predicted"
OPPOSITE = "; OPPOSITE to the prediction"
OUTCOMES = ("as predicted", "opposite to the prediction", "effect, no prediction",
            "no detectable effect", "undetermined")


def _agreement(sign, prediction):
    """The verdict text's ending: nothing without a prediction, else whether `sign` agrees."""
    return "" if prediction is None else AS_PREDICTED if sign == prediction else OPPOSITE


def outcome(verdict: dict) -> str:
    """One of `OUTCOMES` for a verdict as stored in results.json ({"decided", "text"}): a decided
    effect as predicted / opposite / without a prediction, or no detectable effect, or undetermined
    (too few paired seeds)."""
    if verdict["decided"]:
        return (OUTCOMES[0] if verdict["text"].endswith(AS_PREDICTED) else
                OUTCOMES[1] if verdict["text"].endswith(OPPOSITE) else OUTCOMES[2])
    return OUTCOMES[4] if verdict["text"].startswith("undetermined") else OUTCOMES[3]


@dataclasses.dataclass(frozen=True)
class PairedRule:
    """"effect if the `level` CI of the paired difference arm − control of `metric` excludes 0"
    (with `control_metric`: `metric` of arm − `control_metric` of control, e.g. one arm's pristine
    vs corrupted coherence).

    `prediction` ("higher", "lower" or None) is what the hypothesis predicts for arm − control; the
    verdict says whether a decided effect has that sign. Declared with the experiment, before it
    runs; `evaluate` turns the per-seed values into the verdict text."""

    name: str
    metric: str
    arm: str
    control: str
    prediction: str = None
    level: float = 0.95
    control_metric: str = None   # the control's value is this metric (None: `metric`)

    def __post_init__(self):
        if self.prediction not in (None, "higher", "lower"):
            raise ValueError(f"prediction={self.prediction!r}; allowed: 'higher', 'lower', None")

    def statement(self):
        control = (self.control if self.control_metric is None
                   else f"{self.control} ({self.control_metric})")
        return (f"{self.metric}: {self.arm} − {control}, effect if the {self.level:.0%} CI "
                f"({T_METHOD}) excludes 0" + (f"; predicted {self.prediction}"
                                              if self.prediction else ""))

    def evaluate(self, arm_values, control_values) -> Verdict:
        """arm_values / control_values: `{seed: value}` of `metric`."""
        diff = paired_difference(arm_values, control_values, self.level)
        within = self.arm == self.control and self.control_metric is not None
        head = (f"{self.arm}: {self.metric} − {self.control_metric} = {diff.text()}" if within
                else f"{self.arm} − {self.control} = {diff.text()}")
        if diff.low is None:
            return Verdict(self.name, False, f"undetermined: {head}; needs ≥ 2 paired seeds",
                           diff.as_dict())
        if not diff.excludes_zero():
            return Verdict(self.name, False, f"no detectable effect: {head}; the {self.level:.0%} "
                           "CI contains 0", diff.as_dict())
        sign = "higher" if diff.mean > 0 else "lower"
        return Verdict(self.name, True, f"effect ({self.arm} {sign}): {head}"
                       f"{_agreement(sign, self.prediction)}", diff.as_dict())


@dataclasses.dataclass(frozen=True)
class CorrelationRule:
    """"effect if the `level` Fisher-z CI of Pearson r between `x` and `y` excludes 0"."""

    name: str
    x: str
    y: str
    prediction: str = None   # "positive", "negative" or None
    level: float = 0.95

    def __post_init__(self):
        if self.prediction not in (None, "positive", "negative"):
            raise ValueError(f"prediction={self.prediction!r}; allowed: 'positive', 'negative', "
                             "None")

    def statement(self):
        return (f"{self.x} vs {self.y}, effect if the {self.level:.0%} CI ({FISHER_METHOD}) "
                "excludes 0" + (f"; predicted {self.prediction}" if self.prediction else ""))

    def evaluate(self, x_values, y_values) -> Verdict:
        c = correlation(x_values, y_values, self.level)
        head = f"{self.x} vs {self.y}: {c.text()}"
        stat = dataclasses.asdict(c)
        if c.low is None:
            return Verdict(self.name, False, f"undetermined: {head}", stat)
        if not c.excludes_zero():
            return Verdict(self.name, False, f"no detectable correlation: {head}", stat)
        sign = "positive" if c.r > 0 else "negative"
        return Verdict(self.name, True, f"{sign} correlation: {head}"
                       f"{_agreement(sign, self.prediction)}", stat)


# ---------------------------------------------------------------------------- multiplicity

HOLM_METHOD = "Holm (1979) step-down"


def holm(p_values):
    """Holm-adjusted p-values of a family, in the input order: with the m non-None p's sorted,
    p_holm(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)); None (no p: an undetermined rule) stays
    None and is not counted in m. ValueError for a p outside [0, 1]."""
    for p in p_values:
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p!r} must be in [0, 1] (or None for a rule without a p)")
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted, running = [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[i] = running
    return adjusted


def family_wise(verdicts):
    """The verdict entries (`Verdict.entry`) of one run's declared rules as one family: each
    with `p_holm` (`holm`) and `survives_holm` (decided and p_holm < 1 − level)."""
    adjusted = holm([v["p"] for v in verdicts])
    return [{**v, "p_holm": a, "survives_holm": bool(v["decided"] and a is not None
                                                     and a < 1.0 - v["level"])}
            for v, a in zip(verdicts, adjusted)]


def _p_text(p):
    return format(p, ".3g")


def holm_text(verdict, verdicts):
    """The family-wise ending of a verdict's sentence within its family `verdicts` (entries of
    `family_wise`), e.g. "p = 0.012, Holm over 20 rules: p = 0.24, not significant"."""
    if verdict["p"] is None:
        return "no p (not in the Holm family)"
    m = sum(v["p"] is not None for v in verdicts)
    significant = verdict["p_holm"] < 1.0 - verdict["level"]
    return (f"p = {_p_text(verdict['p'])}, Holm over {m} rule{'s' * (m > 1)}: p = "
            f"{_p_text(verdict['p_holm'])}, {'' if significant else 'not '}significant")


def family_tally(verdicts):
    """How many of a family's rules are decided at their level and how many of those survive
    Holm, e.g. "14 decided at 95 %, 3 survive Holm over 16"."""
    levels = {v["level"] for v in verdicts}
    at = f"{levels.pop():.0%}".replace("%", " %") if len(levels) == 1 else "their levels"
    m, survive = sum(v["p"] is not None for v in verdicts), sum(v["survives_holm"] for v in verdicts)
    return (f"{sum(v['decided'] for v in verdicts)} decided at {at}, {survive} "
            f"survive{'s' * (survive == 1)} Holm over {m}")


FAMILY_NOTE = (f"Family-wise: the run's declared rules are one family; p is the two-sided p of "
               f"each rule's statistic (the dual of its interval), adjusted by {HOLM_METHOD} over "
               "the m rules with a p (undetermined ones have none); a decided effect is "
               "significant family-wise when its Holm-adjusted p is below 1 − level.")
