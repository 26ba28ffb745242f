"""Are the examples whose gradients the others support at initialisation learnt first? The
partial Spearman ρ(a_i, t_i | ℓ_i) of alignment at init and learning epoch, against its
permutation null. docs/experiments/intro/alignment_order.md; design §7.2."""

import numpy as np

from cgh_tf.statistics import PairedRule
from configs import alignment_order as order_config

from . import beyond_common as common
from . import figures as fig
from . import graph_loop
from . import per_example_runs
from .experiment import Column, Experiment

DECILES = 10


def _setup(config, run_dir, echo):
    from cgh_tf import coherence, data

    ds = data.load(config.dataset)
    (x, y), (x_test, y_test) = common.arrays(ds.train), common.arrays(ds.test)
    run = per_example_runs.build(config, x, y, ds.input_shape, ds.num_classes)
    records = per_example_runs.EpochRecords(run_dir)

    def log(epoch):
        predicted, losses = run.predict(x, y)
        correct = predicted == y
        row = {"epoch": epoch, "step": epoch, "train_accuracy": float(correct.mean()),
               "train_loss": float(losses.mean()),
               "test_accuracy": float(np.mean(run.predict(x_test, y_test)[0] == y_test))}
        arrays = {"correct": correct}
        if epoch == 0:
            found = coherence.alignment(run.model, x, y, loss=run.loss_fn,
                                        batch_size=int(config.alignment_batch))
            arrays.update(alignment=found.alignment, loss=found.losses)
            row["pairwise_coherence"] = found.stats.pairwise_coherence
        records.put(epoch, **arrays)
        return row

    def scored(curves):
        """(a_i, t_i, ℓ_i) [n'] of the n' examples with a gradient (a_i not NaN), n − n'."""
        epochs = curves["epoch"]
        times = per_example_runs.learning_epochs(records.stacked("correct", epochs), epochs)
        alignment, losses = records.get(0, "alignment"), records.get(0, "loss")
        kept = ~np.isnan(alignment)
        return alignment[kept], times[kept], losses[kept], int((~kept).sum())

    def summarize(curves):
        return {**order_statistics(*scored(curves), config),
                "pairwise_coherence": curves["pairwise_coherence"][0],
                "train_accuracy": curves["train_accuracy"][-1],
                "test_accuracy": curves["test_accuracy"][-1]}

    return graph_loop.Training(
        run.model, run.optimizer, log=log, summarize=summarize,
        extra=lambda curves: {"num_train": len(x), "profiles": profiles(*scored(curves)[:3])},
        **graph_loop.epoch_schedule(run.train_epoch, config, len(x),
                                    log_epochs=range(int(config.epochs) + 1)))


def order_statistics(a, t, loss, without_gradient, config):
    """The summary: partial Spearman ρ(a_i, t_i | ℓ_i) with its interval and permutation null,
    the plain Spearman ρs, means, the share not learnt."""
    from cgh_tf import rank_correlation as rc

    found = rc.partial_spearman(a, t, loss)
    null = per_example_runs.permutation_null(lambda u, v: rc.partial_spearman(u, v, loss).rho,
                                             a, t, config.seed, config.null_permutations)
    return {"partial_spearman": found.rho, "partial_spearman_low": found.low,
            "partial_spearman_high": found.high, "partial_spearman_permuted": null,
            "spearman_alignment": rc.spearman(a, t), "spearman_loss": rc.spearman(loss, t),
            "mean_alignment": float(np.mean(a)), "mean_learning_epoch": float(np.mean(t)),
            "not_learnt": float(np.mean(t > config.epochs)),
            "examples_without_gradient": without_gradient}


def profiles(a, t, loss):
    """Per decile of a_i (and of ℓ_i): the mean a_i (ℓ_i) and the mean learning epoch."""
    out = {}
    for name, score in (("alignment", a), ("loss", loss)):
        bins = np.array_split(np.argsort(score, kind="mergesort"), DECILES)
        out[f"{name}_decile"] = [float(score[b].mean()) for b in bins]
        out[f"learning_epoch_by_{name}"] = [float(t[b].mean()) for b in bins]
    return out


def check_config(config):
    per_example_runs.check_config(config, ("alignment_batch", "null_permutations"))


def arms(scale="small", seeds=3, overrides=None):
    """One arm per dataset (`DATASETS[scale]`, or only `overrides["dataset"]`)."""
    return [arm for dataset, base in common.dataset_bases(
        order_config, scale, dict(overrides or {}), "alignment_order")
        for arm in common.seeded_arms(dataset, dataset, dataset, base, seeds, check_config)]


def rules(arms_):
    """Per dataset, declared before the runs: ρ(a_i, t_i | ℓ_i) below its permutation null."""
    return [PairedRule(f"{group}: examples supported at initialisation are learnt earlier",
                       "partial_spearman", group, group, "lower",
                       control_metric="partial_spearman_permuted")
            for group in dict.fromkeys(a.group for a in arms_)]


COLUMNS = (
    Column("partial_spearman", "partial ρ(a_i, t_i ∣ ℓ_i)"),
    Column("partial_spearman_low", "its 95 % CI low (per seed)"),
    Column("partial_spearman_high", "its 95 % CI high (per seed)"),
    Column("partial_spearman_permuted", "ρ, learning epochs permuted (null)"),
    Column("spearman_alignment", "ρ(a_i, t_i)"),
    Column("spearman_loss", "ρ(ℓ_i, t_i)"),
    Column("mean_alignment", "mean a_i", ".2f"),
    Column("pairwise_coherence", "pairwise coherence at init", ".4f"),
    Column("mean_learning_epoch", "mean learning epoch", ".2f"),
    Column("not_learnt", "share not learnt"),
    Column("train_accuracy", "train acc (last)"),
    Column("test_accuracy", "test acc (last)"),
)


def setting(runs):
    c = runs[0][1]["config"]
    return [f"MLP {c['depth']} × {c['width']} ReLU, plain SGD lr {c['learning_rate']}, batch "
            f"{c['batch_size']}, {c['epochs']} epochs, clean labels. a_i and ℓ_i at the seeded "
            "initialisation over the whole training set (m = n); t_i = first epoch from which "
            f"the example stays correctly classified ({c['epochs']} + 1 = not learnt). ρ: "
            "partial Spearman controlling for ℓ_i; per-seed intervals: Fisher z with σ = "
            "√(1.06/(n − 4)); null: the mean of ρ over "
            f"{c['null_permutations']} permutations of t_i.", ""]


def figures(workdir, runs):
    return [fig.profiles(workdir, "alignment_order.png", runs, (
        ("alignment_decile", "learning_epoch_by_alignment", "a_i at init (decile mean)",
         "mean learning epoch"),
        ("loss_decile", "learning_epoch_by_loss", "ℓ_i at init (decile mean, nats)",
         "mean learning epoch")), "Learning epoch by decile")]


EXPERIMENT = Experiment(
    name="alignment_order", default_seeds=5,
    title="Alignment at initialisation against learning order (partial Spearman, ℓ_i controlled)",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config), columns=COLUMNS,
    rules=rules, figures=figures, setting=setting,
    progress=("partial_spearman", "partial_spearman_permuted", "train_accuracy"))
