"""Depth and width of an MLP: m-coherence at initialisation / after one epoch vs generalisation;
the models of `model_sweep` × real / random labels (docs/experiments/intro/depth_width.md, §7.1).
"""

import functools

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import correlations
from . import curve_stats
from . import graph_loop
from . import model_sweep
from . import probes
from .experiment import Column, Experiment
from .models import mlp

LABELS = ("real", "random")


def summarize(curves, num_params):
    """The run's summary numbers from its curves (None where nothing was measured)."""
    at = {f"{name}_{when}": curve_stats.value_at(curves, f"coherence/{name}", epoch, "epoch")
          for name in ("m_coherence", "alpha") for when, epoch in (("init", 0), ("epoch1", 1))}
    return {**{key: curves[key][-1] for key in ("train_accuracy", "test_accuracy", "gap",
                                                "train_loss")},
            "epochs": curves["epoch"][-1], **at, "num_params": num_params}


def _setup(config, run_dir, echo):
    import keras
    import tensorflow as tf

    from cgh_tf import coherence

    random = config.labels == "random"
    ds = _load(config.dataset, random, int(config.data_seed), config.max_train)
    (x, y), (x_test, y_test) = common.arrays(ds.train), common.arrays(ds.test)
    n = len(x)
    fresh = mlp(config, ds.input_shape, ds.num_classes)  # this seed's initial weights
    model, optimizer, loss_fn, xt, yt, train_epoch, evaluate = graph_loop.reused_epoch_trainer(
        (config.dataset, int(config.depth), int(config.width), float(config.learning_rate),
         int(config.batch_size), n, tuple(ds.input_shape), ds.num_classes),
        lambda: mlp(config, ds.input_shape, ds.num_classes),
        lambda: keras.optimizers.Adam(float(config.learning_rate)), ds.input_shape, n,
        int(config.batch_size))
    graph_loop.restart(model, optimizer, fresh.get_weights(), ((xt, x), (yt, y)))
    sample = common.sample(n, config.coherence_samples, config.data_seed, 1)
    xs, num_params = tf.constant(x_test), curve_stats.params(model)
    coherence_epochs = {int(e) for e in config.coherence_epochs}

    def log(epoch):
        train_loss, pred_train = evaluate(xt, yt)
        pred_train, pred_test = pred_train.numpy(), evaluate(xs, tf.constant(y_test))[1].numpy()
        train_acc, test_acc = probes.accuracy(pred_train, y), probes.accuracy(pred_test, y_test)
        row = {"epoch": epoch, "step": epoch, "train_loss": float(train_loss),
               "train_accuracy": train_acc, "test_accuracy": test_acc,
               "gap": train_acc - test_acc}
        if random:  # accuracy of the fit against the real labels of the training examples
            row["train_true_accuracy"] = probes.accuracy(pred_train, ds.train.original_y)
        if epoch in coherence_epochs:
            stats = coherence.measure(model, x[sample], y[sample], loss=loss_fn, per_layer=True,
                                      batch_size=len(sample))
            row.update(probes.coherence_row("coherence", stats))
        echo(f"  {run_dir} epoch {epoch}: train acc {train_acc:.3f} test acc {test_acc:.3f}")
        return row

    return graph_loop.Training(
        model, optimizer, log=log, summarize=lambda curves: summarize(curves, num_params),
        extra={"num_train": n, "coherence_sample": sample.tolist()},
        **schedule(config, train_epoch, n))


def schedule(config, train_epoch=None, n=0):
    """`graph_loop.epoch_schedule` of a run: logs at `log_epochs` and `coherence_epochs` up to its
    last epoch (`epochs`; `random_epochs` with random labels)."""
    return graph_loop.epoch_schedule(
        train_epoch, config, n, tuple(config.log_epochs) + tuple(config.coherence_epochs),
        epochs=config.epochs if config.labels == "real" else config.random_epochs)


@functools.lru_cache(maxsize=4)
def _load(dataset, random, data_seed, max_train):
    """The dataset with real (random=False) or 100 % uniformly random labels, loaded once."""
    from cgh_tf import data

    return data.load(dataset, label_noise=1.0 if random else 0.0, noise_kind="uniform",
                     seed=data_seed, max_train=max_train)


def check_config(config):
    """ValueError (one line) for a run config a run would fail on or silently misread."""
    from configs import depth_width as dw_config

    need = common.require
    allowed = sorted({d for per in dw_config.DATASET_CHANGES.values() for d in per})
    need(config.dataset in allowed, f"dataset={config.dataset!r} is not supported; allowed: "
          f"{', '.join(allowed)}")
    common.require_one_of(config, "labels", LABELS)
    common.require_ints(config, ("width", "depth", "batch_size", "epochs", "random_epochs",
                                 "coherence_samples", "checkpoint_every_logs"))
    need(config.coherence_samples >= 2, f"coherence_samples={config.coherence_samples!r} must "
          "be >= 2 (m-coherence of a single example is 1 by definition)")
    common.require_positive(config, ("learning_rate",))
    common.require_int_list(config, "log_epochs")
    common.require_int_list(config, "coherence_epochs")
    need({0, 1} <= set(config.coherence_epochs),
          f"coherence_epochs={tuple(config.coherence_epochs)!r} must contain 0 and 1 (the "
          "experiment compares the m-coherence at initialisation and after one epoch)")
    need(config.max_train is None or config_schema.is_int(config.max_train, 2),
          f"max_train={config.max_train!r} must be None or an int >= 2")
    need(config.max_train is None or config.coherence_samples <= config.max_train,
          f"coherence_samples={config.coherence_samples} must be <= max_train={config.max_train}")


def arms(scale="small", seeds=3, overrides=None):
    """Per dataset, model of the sweep (tags: its sweeps) and label kind; the sweep fields are
    not in the runs' configs."""
    import ml_collections

    from configs import depth_width as dw_config

    overrides = dict(overrides or {})
    common.refuse_overrides(overrides, ("width", "depth"), "set by the sweep",
                            "; set widths / depths / fixed_width / fixed_depth instead")
    common.refuse_overrides(overrides, ("labels", "seed"), "set per arm")
    out = []
    for dataset, base in common.dataset_bases(dw_config, scale, overrides, "depth_width"):
        model_sweep.check(base)
        run_base = ml_collections.ConfigDict({k: v for k, v in base.items()
                                              if k not in dw_config.SWEEP_FIELDS})
        for depth, width, sweeps in model_sweep.models(base):
            for labels in LABELS:
                config = config_schema.apply_overrides(run_base, {"depth": depth, "width": width,
                                                                  "labels": labels})
                out += common.seeded_arms(f"{dataset}/d{depth}_w{width:04d}/{labels}",
                                          f"{labels} labels", dataset, config, seeds,
                                          check_config, tags=sweeps)
    return out


def comparisons(arms_):
    """Real vs random labels, per model."""
    groups = dict.fromkeys(a.group for a in arms_)
    return [(g, g[:-4] + "random") for g in groups if g.endswith("/real") and g[:-4] + "random"
            in groups]


def rules(arms_):
    return [statistics.PairedRule(f"{a.rsplit('/', 1)[0]}: real labels more coherent",
                                  "m_coherence_epoch1", a, c, prediction="higher")
            for a, c in comparisons(arms_)]


# (name, x, y, prediction): across models of a dataset (mean over seeds, real labels)
CORRELATION_RULES = (
    statistics.CorrelationRule("coherence predicts a smaller gap", "m_coherence_epoch1", "gap",
                               prediction="negative"),
    statistics.CorrelationRule("coherence predicts test accuracy", "m_coherence_epoch1",
                               "test_accuracy", prediction="positive"),
)


def analyses(runs):
    """Per dataset and sweep (all models, the width sweep, the depth sweep), the declared
    correlations across models of the real-label runs (`correlations.per_panel`), and the gap
    against the train accuracy (does the gap measure how far a model got in the budget?)."""
    real = lambda a: a.config.labels == "real"  # noqa: E731
    lines, out, verdicts = correlations.per_panel(
        runs, CORRELATION_RULES, {"all": lambda a: True, "width": lambda a: "width" in a.tags,
                                  "depth": lambda a: "depth" in a.tags}, real,
        lambda d: f"## {d}: m-coherence after one epoch vs generalisation, across models")
    for dataset in out:
        means = correlations.group_means(runs, ("train_accuracy", "gap"),
                                         lambda a: a.panel == dataset and real(a))
        lines += ["The gap against the train accuracy across models: " + statistics.correlation(
            means["train_accuracy"], means["gap"]).text(), ""]
    return lines, {"correlations": out, "verdicts": verdicts}


def figures(workdir, runs):
    from . import figures as fig

    keys = (("m_coherence_init", "m-coherence at init"),
            ("m_coherence_epoch1", "m-coherence after 1 epoch"),
            ("test_accuracy", "test acc. (fraction)"), ("gap", "train − test acc. (fraction)"))
    files = []
    for dataset in dict.fromkeys(a.panel for a, _ in runs):
        for axis, log_x in (("width", 2), ("depth", None)):
            chosen = [(a, r) for a, r in runs if a.panel == dataset and axis in a.tags]
            if chosen:
                files.append(fig.summary_vs_axis(
                    workdir, f"depth_width_{dataset}_{axis}.png", chosen, keys, axis=axis,
                    x_label=f"{axis} (hidden {'units' if axis == 'width' else 'layers'})",
                    log_x=log_x, series=lambda a: a.label,
                    title=f"{dataset}: {axis} sweep, real vs random labels"))
    return files


run = graph_loop.declared_run(_setup, check_config)

EXPERIMENT = Experiment(
    name="depth_width", title="Depth and width: m-coherence vs generalisation", arms=arms,
    default_seeds=5,
    run_arm=run, loop="graph",
    columns=(Column("num_params", "params", ".0f"),
             Column("m_coherence_init", "m-coh. init", ".2f"),
             Column("m_coherence_epoch1", "m-coh. 1 epoch", ".2f"),
             Column("train_accuracy", "train acc"), Column("test_accuracy", "test acc"),
             Column("gap", "gap (train − test)")),
    comparisons=comparisons, compared=("m_coherence_init", "m_coherence_epoch1"), rules=rules,
    analyses=analyses, figures=figures,
    progress=("m_coherence_epoch1", "train_accuracy", "test_accuracy", "gap"))
