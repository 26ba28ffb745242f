"""Does memorisation suppression grow as the corrupted set gets less coherent? At one size, the
noise kind sets the corrupted set's coherence; every kind trains `scale`'s arms. Rules: `scale`'s
per kind, the ordering `ORDER` and its premise `PREMISE` (`analyses`).
docs/experiments/intro/noise_structure.md; design §7.1."""

from cgh_tf import statistics
from configs import noise_structure as ns_config

from . import beyond_common as common
from . import figures as fig
from . import graph_loop
from . import memorisation_run
from . import runner
from . import scale
from . import scale_trend
from . import update_rules
from .experiment import Column, Experiment

ORDER = ("isolated", "uniform", "pair")    # CGH's predicted order of suppression, largest first
PREMISE = ("pair", "uniform", "isolated")  # expected order of corrupted coherence, largest first


def check_config(config):
    """`scale.check_config` plus the coherence sample size."""
    scale.check_config(config)
    common.require_ints(config, ("coherence_samples",), 2)


def _coherence(model, ds, config):
    """{pairwise/<sample>: (r − 1)/(m − 1)} of the fixed corrupted and pristine samples."""
    import keras

    from cgh_tf import coherence

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y, corrupted = *common.arrays(ds.train), ds.train.corrupted
    row = {}
    for name, pool, salt in (("corrupted", corrupted, 1), ("pristine", ~corrupted, 2)):
        idx = common.sample(pool, config.coherence_samples, config.data_seed, salt)
        stats = coherence.measure(model, x[idx], y[idx], loss=loss, batch_size=len(idx))
        row[f"pairwise/{name}"] = stats.pairwise_coherence
    return row


def _setup(config, run_dir, echo):
    def build(config, model, ds):
        built = update_rules.build(config, memorisation_run.OPTIMIZERS)
        return (*built, {f"{k}_init": v for k, v in _coherence(model, ds, config).items()})

    return memorisation_run.setup(config, run_dir, echo, build=build,
                                  measure=lambda model, ds, epoch: _coherence(model, ds, config))


def arms(scale_name="small", seeds=3, overrides=None):
    """Arms `<kind>/<arm>` per noise kind of `KINDS` and arm of `scale.ARMS` (subsets:
    `overrides["kinds"]`, `overrides["arms"]`)."""
    overrides = dict(overrides or {})
    kinds = common.chosen(overrides, "kinds", None, ns_config.KINDS, "kind")
    arm_names = common.chosen(overrides, "arms", None, scale.ARMS, "arm")
    common.refuse_overrides(overrides, scale.ARM_FIELDS + ("noise_kind",),
                            "set by each arm and panel")
    ((_, base),) = common.dataset_bases(ns_config, scale_name, overrides, "noise_structure")
    return scale.panel_arms(base, [(kind, {"noise_kind": kind}) for kind in kinds], arm_names,
                            ns_config.WINSORIZE_PCT, seeds, check_config)


def _ordered(values, order, what):
    """(rows [(larger, smaller, PairedDifference)], verdict) of the declared order rule over
    {kind: {seed: value}}, `order` largest first."""
    rows = [(hi, lo, statistics.paired_difference(values[hi], values[lo]))
            for hi, lo in zip(order, order[1:])]
    if any(d.high is not None and d.high < 0 for _, _, d in rows):
        verdict = "contradicted (a CI excludes 0 below)"
    elif all(d.low is not None and d.low > 0 for _, _, d in rows):
        verdict = "supported (every CI excludes 0 above)"
    else:
        verdict = "not decided (a CI includes 0)"
    return rows, f"{what} {' > '.join(order)}: {verdict}"


def analyses(runs):
    """The order rule (`_ordered`) of every matched pair's suppression and of the premise."""
    groups = {a.group for a, _ in runs}
    lines = ["## Does suppression order with the corrupted set's coherence?", "",
             "Declared rule: suppression s = control − arm corrupted train accuracy (noisy "
             "labels, last epoch), per seed; an order holds if every adjacent paired 95 % CI "
             "(Student t over seeds) excludes 0 above, is contradicted if one excludes 0 below.",
             "", "| order tested | difference | mean [95 % CI] | verdict |", "|---|---|---|---|"]
    out = {}
    tests = [("corrupted pairwise coherence at init (SGD arm)", PREMISE,
              lambda kind: runner.per_seed(runs, f"{kind}/sgd", "pairwise/corrupted_init"))
             ] if all(f"{k}/sgd" in groups for k in PREMISE) else []
    for arm, control, matched in scale.PAIRS:
        if matched and all(f"{k}/{g}" in groups for k in ORDER for g in (arm, control)):
            tests.append((f"suppression {control} − {arm}", ORDER,
                          lambda kind, a=arm, c=control: scale_trend.suppression(runs, kind, a, c)))
    for what, order, values_of in tests:  # every group of every kind planned
        rows, verdict = _ordered({k: values_of(k) for k in order}, order, what)
        out[what] = {"verdict": verdict, "differences": [
            {"larger": hi, "smaller": lo, **d.as_dict()} for hi, lo, d in rows]}
        lines += [f"| {what} | {hi} − {lo} | {d.text('+.3f')} | {verdict.split(': ')[-1]} |"
                  for hi, lo, d in rows]
    return lines + [""] + _room(runs, groups), {"order": out}


def _room(runs, groups):
    """The controls' own corrupted accuracy per kind: the room a suppression has (a floor)."""
    controls = [c for _, c, matched in scale.PAIRS if matched]
    lines = ["Room to suppress: each control's corrupted train accuracy (mean over seeds, last "
             "epoch); near 0 the suppression of that kind is floored at 0.", "",
             "| control | " + " | ".join(ORDER) + " |", "|---" * (len(ORDER) + 1) + "|"]
    for control in controls:
        cells = [statistics.summarize(list(runner.per_seed(runs, f"{k}/{control}",
                                                     "corrupted_accuracy").values())).text(".3f")
                 if f"{k}/{control}" in groups else "n/a" for k in ORDER]
        lines.append(f"| {control} | " + " | ".join(cells) + " |")
    return lines + [""]


def setting(runs):
    first = runs[0][1]
    c = first["config"]
    pct = next((r["config"]["winsorize_pct"] for a, r in runs if r["config"]["winsorize_pct"]), 0)
    counts = {a.panel: r["num_corrupted"] for a, r in runs}
    return [f"MNIST-1D, n = {first['num_train']:,}, {c['label_noise']:.0%} label noise selected "
            f"(corrupted examples: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            + f"); MLP {c['depth']} × {c['width']} ReLU, SGD lr {c['learning_rate']}, batch "
            f"{c['batch_size']} (SGD ×3: 3×), {c['epochs']} epochs, winsorized c = "
            f"{pct} %. Pairwise coherence (r − 1)/(m − 1) of fixed "
            f"samples of m = {c['coherence_samples']} corrupted / pristine examples with their "
            "training labels (inference mode).", ""]


def figures(workdir, runs):
    keys = (("corrupted_accuracy", "corrupted train acc. (noisy label)"),
            ("pristine_accuracy", "pristine train acc."),
            ("pairwise/corrupted", "pairwise coherence, corrupted sample"),
            ("pairwise/pristine", "pairwise coherence, pristine sample"))
    return [fig.curves_per_group(workdir, "noise_structure_curves.png", runs, keys, x="epoch",
                                 x_label="epoch", title="Memorisation and coherence per noise kind",
                                 row_of=lambda a: a.panel)]


EXPERIMENT = Experiment(
    name="noise_structure",
    title="Memorisation suppression by noise structure (pair, uniform, isolated labels)",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config), loop="graph",
    columns=(*scale.ACCURACY_COLUMNS,
             Column("pairwise/corrupted_init", "pairwise coh. corrupted (init)", ".4f"),
             Column("pairwise/corrupted", "pairwise coh. corrupted (last)", ".4f"),
             Column("pairwise/pristine", "pairwise coh. pristine (last)", ".4f")),
    comparisons=scale.comparisons, compared=scale.COMPARED,
    rules=scale.rules, analyses=analyses, setting=setting, figures=figures,
    progress=("corrupted_accuracy", "pristine_accuracy", "pairwise/corrupted"))
