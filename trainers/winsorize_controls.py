"""Is winsorizing's suppression of memorisation due to coherence, or to clipping or a smaller
step? Winsorized SGD at c against SGD and controls matched to it at initialisation (`calibrate`);
statistic: `frontier_point`. docs/experiments/intro/winsorize_controls.md; design §7.1."""

import numpy as np

from cgh_tf import statistics
from configs import winsorize_controls as wc_config

from . import beyond_common as common
from . import config_schema
from . import figures as fig
from . import graph_loop
from . import memorisation_run
from . import runner
from . import update_rules
from .experiment import Column, Experiment

ARMS = {"sgd": "SGD", "winsorize": "winsorized SGD", "clip": "norm clipping, matched share",
        "matched_lr": "SGD, matched lr", "step_matched": "SGD, step norm matched per batch"}
CONTROLS = ("clip", "matched_lr", "step_matched")
CALIBRATED = ("clip", "matched_lr")  # the controls matched by the calibration at initialisation


def check_config(config):
    """`memorisation_run.check_config` plus the arm, its c, the calibration and the frontier."""
    memorisation_run.check_config(config)
    need, is_int = common.require, config_schema.is_int
    common.require_one_of(config, "arm", ARMS)
    pct = config.winsorize_pct
    update_rules.require_percentage(pct)
    need((pct == 0) == (config.arm == "sgd"), f"arm={config.arm!r} with winsorize_pct={pct!r}: "
         "the sgd arm has c = 0, every other arm the c > 0 it is matched to")
    need(is_int(config.calibration_batches, 1)
         and config.calibration_batches * config.batch_size <= config.train_size,
         f"calibration_batches={config.calibration_batches!r} must be an int >= 1 with "
         f"calibration_batches × batch_size <= train_size={config.train_size}")
    level = config.frontier_pristine
    need(isinstance(level, float) and 0 < level < 1,
         f"frontier_pristine={level!r} must be a float in (0, 1)")


def calibrate(model, ds, config):
    """Over the first `calibration_batches` batches of epoch 0 at the current weights: the mean
    share of per-example gradient values winsorizing at c changes, and ρ = mean ‖winsorized
    mean‖ / mean ‖mean gradient‖."""
    import keras
    import tensorflow as tf

    from cgh_tf import aggregators, per_example

    x, y = common.arrays(ds.train)
    winsorize, batch = aggregators.Winsorize(float(config.winsorize_pct)), int(config.batch_size)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    perm = graph_loop.epoch_permutation(config.seed, 0, len(x))
    shares, wins_norms, mean_norms = [], [], []
    for k in range(int(config.calibration_batches)):
        idx = perm[k * batch:(k + 1) * batch]
        grads = per_example.per_example_gradients(model, x[idx], y[idx], loss=loss)
        sizes = [float(np.prod(g.shape[1:])) for g in grads]
        shares.append(sum(float(winsorize.changed_share(g)) * s for g, s in zip(grads, sizes))
                      / sum(sizes))
        wins_norms.append(float(tf.linalg.global_norm([winsorize.reduce(g, 0) for g in grads])))
        mean_norms.append(float(tf.linalg.global_norm([tf.reduce_mean(g, 0) for g in grads])))
    per_side = int(np.round((batch - 1) * config.winsorize_pct / 100))
    return {"changed_share": float(np.mean(shares)), "nominal_share": 2 * per_side / batch,
            "norm_ratio": float(np.mean(wins_norms) / np.mean(mean_norms))}


def build(config, model, ds):
    """`memorisation_run.setup`'s build: the arm's SGD and aggregator, calibrated if a control."""
    from cgh_tf import aggregators, optimizers

    rate, aggregator = float(config.learning_rate), None
    calibration = calibrate(model, ds, config) if config.arm in CALIBRATED else {}
    if config.arm == "winsorize":
        aggregator = aggregators.Winsorize(float(config.winsorize_pct))
    elif config.arm == "clip":
        aggregator = aggregators.NormClip(100.0 * calibration["changed_share"])
    elif config.arm == "matched_lr":
        rate *= calibration["norm_ratio"]
    elif config.arm == "step_matched":
        aggregator = aggregators.NormMatchedMean(float(config.winsorize_pct))
    return optimizers.build("sgd", rate), 1, aggregator, {**calibration, "learning_rate_used": rate}


def frontier_point(curves, level):
    """{corrupted_at_pristine, epoch_at_pristine}: the corrupted accuracy and epoch where the
    pristine accuracy first reaches `level` (linear between logged points); None if never."""
    pristine, keys = curves["pristine_accuracy"], ("corrupted_accuracy", "epoch")
    i = next((i for i, p in enumerate(pristine) if p is not None and p >= level), None)
    if i is None:
        values = (None, None)
    elif i == 0:
        values = (curves[k][0] for k in keys)
    else:
        t = (level - pristine[i - 1]) / (pristine[i] - pristine[i - 1])
        values = (curves[k][i - 1] + t * (curves[k][i] - curves[k][i - 1]) for k in keys)
    return dict(zip(("corrupted_at_pristine", "epoch_at_pristine"), values))


def _setup(config, run_dir, echo):
    return memorisation_run.setup(
        config, run_dir, echo, build=build,
        summarize_more=lambda curves: frontier_point(curves, float(config.frontier_pristine)))


def _group(arm, pct):
    return "sgd" if arm == "sgd" else f"{arm}_c{pct:g}"


def arms(scale_name="small", seeds=3, overrides=None):
    """SGD and, per c of `WINSORIZE_PCTS` (or `overrides["pcts"]`), every other arm."""
    overrides = dict(overrides or {})
    pcts = tuple(overrides.pop("pcts", wc_config.WINSORIZE_PCTS))
    common.refuse_overrides(overrides, ("arm", "winsorize_pct"), "set by each arm",
                            " (choose the c values with pcts=...)")
    ((_, base),) = common.dataset_bases(wc_config, scale_name, overrides, "winsorize_controls")
    plan = [("sgd", 0.0)] + [(arm, float(p)) for p in pcts for arm in ARMS if arm != "sgd"]
    return [a for arm, pct in plan for a in common.seeded_arms(
        _group(arm, pct), ARMS[arm] + ("" if arm == "sgd" else f" (c = {pct:g} %)"),
        "SGD" if arm == "sgd" else f"c = {pct:g} %",
        config_schema.apply_overrides(base, {"arm": arm, "winsorize_pct": pct}), seeds,
        check_config)]


def _pcts(arms_):
    return sorted({a.config.winsorize_pct for a in arms_ if a.config.arm == "winsorize"})


def _against_controls(arms_):
    """[(c, winsorize at c, control)] for SGD and every control at c."""
    return [(p, _group("winsorize", p), control) for p in _pcts(arms_)
            for control in ("sgd",) + tuple(_group(c, p) for c in CONTROLS)]


def comparisons(arms_):
    return [(arm, control) for _, arm, control in _against_controls(arms_)] + [
        (_group(c, p), "sgd") for p in _pcts(arms_) for c in CONTROLS]


def rules(arms_):
    return [statistics.PairedRule(f"winsorize c = {p:g} % suppresses memorisation vs {control} "
                                  "(frontier)", "corrupted_at_pristine", arm, control,
                                  prediction="lower")
            for p, arm, control in _against_controls(arms_)]


def analyses(runs):
    """Per c: attributed to coherence only if winsorizing beats every control (declared rules)."""
    arms_ = [a for a, _ in runs]
    lines, out = ["## Attribution (declared): coherence only if winsorizing beats every control",
                  ""], {}
    verdicts = {rule.control: rule.evaluate(*(runner.per_seed(runs, g, rule.metric)
                                              for g in (rule.arm, rule.control)))
                for rule in rules(arms_) if rule.control != "sgd"}  # keyed by the control at c
    for p in _pcts(arms_):
        beaten = [verdicts[_group(c, p)].decided and verdicts[_group(c, p)].statistic["mean"] < 0
                  for c in CONTROLS]
        text = ("attributed to coherence: winsorizing beats every control" if all(beaten) else
                "NOT attributed to coherence: winsorizing does not beat "
                + " and ".join(c for c, b in zip(CONTROLS, beaten) if not b))
        out[f"c{p:g}"] = {"attributed": all(beaten), "beats": dict(zip(CONTROLS, beaten))}
        lines.append(f"- c = {p:g} %: {text}.")
    return lines + [""], {"attribution": out}


def setting(runs):
    c = runs[0][1]["config"]
    lines = [f"MNIST-1D, n = {c['train_size']:,}, {c['label_noise']:.0%} {c['noise_kind']} label "
             f"noise; MLP {c['depth']} × {c['width']} ReLU, SGD lr {c['learning_rate']}, batch "
             f"{c['batch_size']}, {c['epochs']} epochs; calibration on the first "
             f"{c['calibration_batches']} batches at initialisation; frontier statistic at "
             f"pristine train accuracy {c['frontier_pristine']}.", ""]
    for group in dict.fromkeys(a.group for a, _ in runs if a.config.arm in CALIBRATED):
        values = [r["summary"] for a, r in runs if a.group == group]
        lines.append(f"- {group}: winsorized share of changed values "
                     f"{np.mean([v['changed_share'] for v in values]):.4f} (nominal "
                     f"{values[0]['nominal_share']:.4f}), update-norm ratio ρ "
                     f"{np.mean([v['norm_ratio'] for v in values]):.3f} (mean over seeds)")
    return lines + [""]


def figures(workdir, runs):
    return [fig.frontier(workdir, "winsorize_controls_frontier.png", runs, "pristine_accuracy",
                         "corrupted_accuracy", "pristine train acc.",
                         "corrupted train acc. (noisy label)",
                         "Memorisation frontier per arm (one point per epoch)"),
            fig.curves_per_group(workdir, "winsorize_controls_curves.png", runs,
                                 (("corrupted_accuracy", "corrupted train acc."),
                                  ("pristine_accuracy", "pristine train acc."),
                                  ("test_accuracy", "test acc.")), x="epoch", x_label="epoch",
                                 title="Accuracies per arm", row_of=lambda a: a.panel)]


EXPERIMENT = Experiment(
    name="winsorize_controls", default_seeds=5,
    title="Winsorized SGD against norm clipping and a matched learning rate",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config), loop="graph",
    scales=("small",),
    columns=(Column("corrupted_at_pristine", "corrupted acc at pristine = P (frontier)"),
             Column("epoch_at_pristine", "epoch reaching P", ".1f"),
             Column("corrupted_accuracy", "corrupted train acc (last)"),
             Column("pristine_accuracy", "pristine train acc (last)"),
             Column("test_accuracy", "test acc (last)"),
             Column("best_test_accuracy", "best test acc")),
    comparisons=comparisons, compared=("corrupted_at_pristine", "corrupted_accuracy",
                                       "pristine_accuracy", "test_accuracy"),
    rules=rules, analyses=analyses, setting=setting, figures=figures,
    progress=("corrupted_at_pristine", "corrupted_accuracy", "pristine_accuracy"))
