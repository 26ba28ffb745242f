"""Flagging mislabelled examples by their alignment: the AUROC and precision of −a_i against the
small-loss rule and forgetting counts at each of `score_epochs`.
docs/experiments/intro/label_noise_detection.md; design §7.2."""

import numpy as np

from cgh_tf.statistics import PairedRule
from configs import label_noise_detection as noise_config

from . import beyond_common as common
from . import config_schema
from . import figures as fig
from . import graph_loop
from . import per_example_runs
from . import probes
from .experiment import Column, Experiment

SCORES = ("alignment", "loss", "forgetting")


def _setup(config, run_dir, echo):
    from cgh_tf import data, noisy_labels

    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=int(config.data_seed))
    x, y, corrupted = *common.arrays(ds.train), ds.train.corrupted
    x_test, y_test = common.arrays(ds.test)
    run = per_example_runs.build(config, x, y, ds.input_shape, ds.num_classes)
    records = per_example_runs.EpochRecords(run_dir)

    def log(epoch):
        predicted = run.predict(x, y)[0]
        correct = predicted == y
        row = {"epoch": epoch, "step": epoch, **probes.label_accuracies(predicted, y, corrupted),
               "test_accuracy": probes.accuracy(run.predict(x_test, y_test)[0], y_test)}
        arrays = {}
        if epoch in config.score_epochs:
            history = np.concatenate([records.stacked("correct", range(1, epoch)),
                                      correct[None]]) if epoch >= 2 else None
            scores = example_scores(run, x, y, history, config)
            row.update(score_row(scores, corrupted, config.label_noise),
                       examples_without_gradient=int(np.isinf(scores["alignment"]).sum()))
            if epoch == 0:   # the null: the mean AUROC of −a_i over permuted corrupted masks
                row["auroc/alignment_permuted"] = per_example_runs.permutation_null(
                    noisy_labels.auroc, _finite(scores["alignment"]), corrupted, config.seed,
                    config.null_permutations)
            arrays = {f"score/{name}": score for name, score in scores.items()}
        records.put(epoch, correct=correct, **arrays)
        return row

    def summarize(curves):
        summary = {f"{key}/e{int(epoch)}": value for key in curves if "/" in key
                   for epoch, value in zip(curves["epoch"], curves[key])
                   if epoch in config.score_epochs and value is not None}
        return {**summary, **{key: curves[key][-1] for key in (
            "pristine_accuracy", "corrupted_accuracy", "test_accuracy")}}

    def profiles(curves):
        """{epoch: the score epochs, auroc/<score>: its AUROC at each}."""
        summary, scored = summarize(curves), list(config.score_epochs)
        return {"epoch": scored, **{f"auroc/{s}": [summary.get(f"auroc/{s}/e{e}") for e in scored]
                                    for s in SCORES}}

    return graph_loop.Training(
        run.model, run.optimizer, log=log, summarize=summarize,
        extra=lambda curves: {"num_train": len(x), "num_corrupted": int(corrupted.sum()),
                              "profiles": profiles(curves)},
        **graph_loop.epoch_schedule(run.train_epoch, config, len(x),
                                    log_epochs=range(int(config.epochs) + 1)))


def example_scores(run, x, y, history, config):
    """{name: [n] score} of every training example at the current weights; `history` [epochs
    from 1, n] bool: correctness after each (None before epoch 2: no forgetting score)."""
    from cgh_tf import coherence, noisy_labels

    found = coherence.alignment(run.model, x, y, loss=run.loss_fn,
                                batch_size=int(config.alignment_batch))
    # g_i = 0 (fitted exactly; a_i undefined): least suspicious
    scores = {"alignment": np.where(np.isnan(found.alignment), -np.inf, -found.alignment),
              "loss": found.losses}
    if history is not None:
        scores["forgetting"] = noisy_labels.forgetting_counts(history)
    return scores


def score_row(scores, corrupted, noise_rate):
    """{auroc/<score>, precision/<score>}: AUROC for `corrupted`; share corrupted among the
    round(noise_rate · n) highest scores."""
    from cgh_tf import noisy_labels

    row = {}
    for name, score in scores.items():
        row[f"auroc/{name}"] = noisy_labels.auroc(_finite(score), corrupted)
        row[f"precision/{name}"] = float(
            corrupted[noisy_labels.small_loss_flags(_finite(score), noise_rate)].mean())
    return row


def _finite(score):
    """±inf as the largest finite floats (ranks unchanged; `auroc` takes no inf)."""
    big = np.finfo(np.float64).max
    return np.nan_to_num(score, posinf=big, neginf=-big)


def check_config(config):
    """`per_example_runs.check_config` plus the label noise and the score epochs."""
    per_example_runs.check_config(config, ("alignment_batch", "null_permutations"))
    common.require_one_of(config, "noise_kind", ("other", "uniform"))
    common.require_label_noise(config)
    epochs = tuple(config.score_epochs)
    common.require(
        len(epochs) > 0 and epochs[0] == 0 and all(config_schema.is_int(e, 0) for e in epochs)
        and list(epochs) == sorted(set(epochs)) and epochs[-1] <= config.epochs,
        f"score_epochs={epochs!r} must be increasing ints from 0 (initialisation) to at most "
        f"epochs={config.epochs}")


def arms(scale="small", seeds=3, overrides=None):
    """One arm per dataset and noise level (`NOISE_LEVELS`, or `overrides["label_noise"]`); seed
    k corrupts with data_seed k, so the intervals cover which labels are corrupted."""
    overrides = dict(overrides or {})
    return [arm for dataset, base in common.dataset_bases(noise_config, scale, overrides,
                                                          "label_noise_detection")
            for level in ((base.label_noise,) if "label_noise" in overrides
                          else noise_config.NOISE_LEVELS)
            for arm in common.seeded_arms(
                f"{dataset}/noise{round(level * 100):02d}", f"{dataset}, {level:.0%} noise",
                dataset, config_schema.apply_overrides(base, {"label_noise": level}), seeds,
                check_config, seed_fields=("seed", "data_seed"))]


def rules(arms_):
    """Per group: −a_i's AUROC above its null at init, the loss's at every score epoch and
    forgetting's at the last (from epoch 2)."""
    out = []
    for group, arm in {a.group: a for a in arms_}.items():
        epochs = tuple(arm.config.score_epochs)
        against = [("flags corrupted labels at initialisation", 0, "alignment_permuted")]
        against += [(f"beats the small-loss rule after {e} epochs", e, "loss") for e in epochs]
        if epochs[-1] >= 2:
            against.append((f"beats forgetting counts after {epochs[-1]} epochs", epochs[-1],
                            "forgetting"))
        out += [PairedRule(f"{group}: −a_i {what}", f"auroc/alignment/e{e}", group, group,
                           "higher", control_metric=f"auroc/{control}/e{e}")
                for what, e, control in against]
    return out


def columns(score_epochs, last):
    """The table: per score epoch the AUROCs and precisions, then the accuracies."""
    def per_epoch(kind, name):  # kind: "auroc" or "precision"
        return [Column(f"{kind}/{s}/e{e}", f"{name} {label}, epoch {e}") for e in score_epochs
                for s, label in (("alignment", "−a_i"), ("loss", "loss"))]

    return (Column("auroc/alignment_permuted/e0", "AUROC −a_i, permuted (null), epoch 0"),
            *per_epoch("auroc", "AUROC"),
            Column(f"auroc/forgetting/e{last}", f"AUROC forgetting, epoch {last}"),
            *per_epoch("precision", "precision"),
            Column("pristine_accuracy", "pristine train acc (last)"),
            Column("corrupted_accuracy", "corrupted train acc, noisy label (last)"),
            Column("test_accuracy", "test acc (last)"))


def setting(runs):
    c = runs[0][1]["config"]
    return [f"MLP {c['depth']} × {c['width']} ReLU, plain SGD lr {c['learning_rate']}, batch "
            f"{c['batch_size']}, {c['epochs']} epochs; label noise '{c['noise_kind']}' (each "
            "corrupted label is another class, uniformly; corrupted set drawn per seed). Scores "
            "over the whole training set (m = n) at epochs "
            f"{', '.join(map(str, c['score_epochs']))}; precision: share corrupted among the "
            "noise-rate share of examples with the highest score. Forgetting counts from the "
            "correctness after each epoch from 1 on (coarser than Toneva et al.'s per "
            "presentation).", ""]


def figures(workdir, runs):
    return [fig.profiles(workdir, "label_noise_detection.png", runs, tuple(
        ("epoch", f"auroc/{s}", "epoch (0 = initialisation)", f"AUROC of {label}")
        for s, label in (("alignment", "−a_i"), ("loss", "the loss"),
                         ("forgetting", "forgetting counts"))),
        "Detecting corrupted labels")]


EXPERIMENT = Experiment(
    name="label_noise_detection", default_seeds=5,
    title="Flagging corrupted labels: AUROC of −a_i against the small-loss rule and forgetting",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config),
    columns=columns(noise_config.get_config().score_epochs, noise_config.get_config().epochs),
    loop="graph", scales=("small",), rules=rules,
    figures=figures, setting=setting,
    progress=("auroc/alignment/e0", "auroc/alignment/e1", "auroc/loss/e1"))
