"""Real vs random labels across architectures (MLP, CNN, ResNet): coherence along training
(arXiv 2008.01217; docs/experiments/intro/real_vs_random_arch.md, design §7.1)."""

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import crossings
from . import curve_stats
from . import figures as plots
from . import graph_loop
from . import models
from . import per_example_runs
from . import probes
from .experiment import Column, Experiment

ARCH_NAMES = ("mlp", "cnn", "resnet")
DATASET_NAMES = ("mnist1d", "mnist5k")
ARMS = ((0.0, "real"), (1.0, "random"))  # (label_noise, arm name)


def build_model(config, input_shape, num_classes):
    """MLP (layers dense1.., out) / CNN / BN ResNet by `config.arch`."""
    if config.arch == "mlp":
        return models.mlp(config, input_shape, num_classes, prefix="dense")
    return models.conv_net(config, input_shape, num_classes)


def samples(config, splits):
    """{name: (x, y)}: `coherence_samples` fixed examples of each split (0: all; salts 1, 2, ...);
    ValueError if m exceeds one."""
    m = int(config.coherence_samples)
    common.require(all(m <= len(x) for x, _ in splits.values()), f"coherence_samples={m} exceeds "
                   f"the {' / '.join(str(len(x)) for x, _ in splits.values())} examples of "
                   f"{config.dataset}'s {' / '.join(splits)} splits")
    return {name: (x[idx], y[idx]) for salt, (name, (x, y)) in enumerate(splits.items(), 1)
            for idx in [common.sample(len(x), m or len(x), config.sample_seed, salt)]}


def _setup(config, run_dir, echo):
    from cgh_tf import data, optimizers

    data_seed = int(config.seed) if int(config.data_seed) < 0 else int(config.data_seed)
    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=data_seed,
                   max_train=int(config.max_train) or None, max_test=int(config.max_test) or None)
    (x, y), (x_test, y_test) = common.arrays(ds.train), common.arrays(ds.test)
    fixed = samples(config, {"train": (x, y), "test": (x_test, y_test)})
    m, batch = len(fixed["train"][0]), int(config.coherence_batch_size)
    run = per_example_runs.build(
        config, x, y, ds.input_shape, ds.num_classes,
        model=build_model(config, ds.input_shape, ds.num_classes),
        optimizer=optimizers.build("sgd", float(config.learning_rate),
                                   momentum=float(config.momentum)))
    steps_per_epoch = run.train_epoch.batches_per_epoch
    evaluate = probes.streamed_loss_accuracy(run.model)
    points = graph_loop.log_steps(config.log_epochs, int(config.epochs), steps_per_epoch)

    def log(step):
        row = {"step": step, "epoch": points[step],
               **probes.split_metrics(evaluate, {"train": (x, y), "test": (x_test, y_test)}),
               **probes.sample_coherence(run.model, fixed, run.loss_fn, pairwise=True,
                                         batch_size=batch)}
        echo(f"  {run_dir} epoch {points[step]:g} (update {step}): train acc "
             f"{row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} pairwise "
             f"coh. train {row[crossings.CURVE]:.3g}")
        return row

    def summarize(curves):
        return {**run_summary(curves, float(config.early_epoch)), "m": m,
                "num_params": curve_stats.params(run.model)}

    every = int(config.checkpoint_every_logs)
    return graph_loop.Training(
        run.model, run.optimizer, log=log, summarize=summarize,
        extra=lambda curves: dict(
            num_train=len(x), num_test=len(x_test), num_corrupted=int(ds.train.corrupted.sum()),
            steps_per_epoch=steps_per_epoch, layers=probes.layer_names(curves, "coherence/train")),
        **graph_loop.step_schedule(run.train_epoch, config, len(x), points,
                                   [s for s in points if s > 0][every - 1::every], "update"))


def run_summary(curves, early_epoch):
    """r (`coh`) and (r − 1)/(m − 1) (`pairwise`) of the train / test samples at init,
    `early_epoch` and the end (None where not logged); r's max and its epoch; last loss / acc."""
    summary = {}
    for sample in ("train", "test"):
        for name, key in (("coh", f"coherence/{sample}/m_coherence"),
                          ("pairwise", f"coherence/{sample}/pairwise")):
            if key not in curves:
                continue
            for when, epoch in (("init", 0.0), ("early", early_epoch)):
                summary[f"{sample}_{name}_{when}"] = curve_stats.value_at(curves, key, epoch,
                                                                          "epoch")
            summary[f"{sample}_{name}_end"] = curves[key][-1]
        summary[f"{sample}_coh_max"], summary[f"{sample}_coh_epoch_of_max"] = curve_stats.best_at(
            curves, f"coherence/{sample}/m_coherence")
    summary.update({key: curves[key][-1] for key in ("train_loss", "train_accuracy",
                                                     "test_loss", "test_accuracy")})
    return summary


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need, number = common.require, config_schema.is_number
    need(config.dataset in DATASET_NAMES, f"dataset={config.dataset!r} is unknown for "
         f"real_vs_random_arch; allowed: {', '.join(DATASET_NAMES)}")
    common.require_one_of(config, "arch", ARCH_NAMES)
    common.require_each(config, ("label_noise",), lambda v: number(v) and 0 <= v <= 1,
                        "in [0, 1] (0 real, 1 random labels)")
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    common.require_ints(config, ("width", "depth", "batch_size", "epochs",
                                 "checkpoint_every_logs", "coherence_batch_size"))
    models.check_conv_net(config)
    common.require_ints(config, ("coherence_samples", "max_train", "max_test", "sample_seed",
                                 "seed"), 0)
    need(config_schema.is_int(config.data_seed, -1),
         f"data_seed={config.data_seed!r} must be an int >= 0, or -1 for the run's seed")
    need(config.coherence_samples != 1, "coherence_samples=1 has no pair of examples; use m >= 2 "
         "or 0 (the whole training set)")
    common.require_positive(config, ("learning_rate",))
    common.require_each(config, ("momentum",), lambda v: number(v) and 0 <= v < 1, "in [0, 1)")
    need(isinstance(config.log_epochs, (tuple, list))
         and all(number(e) and e >= 0 for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be numbers >= 0")
    need(number(config.early_epoch) and config.early_epoch in tuple(config.log_epochs)
         and config.early_epoch <= config.epochs,
         f"early_epoch={config.early_epoch!r} must be one of log_epochs and <= epochs "
         f"({config.epochs})")
    for field in ("max_train", "max_test"):
        need(config[field] == 0 or config[field] >= config.coherence_samples,
             f"{field}={config[field]} is smaller than coherence_samples="
             f"{config.coherence_samples}")


def arms(scale="small", seeds=3, overrides=None, archs=None):
    """Arms "dataset/arch/real|random" (panel "dataset/arch") per dataset
    (`common.dataset_bases`) and architecture (`overrides["arch"]`, `archs` or `ARCHS`)."""
    from configs import real_vs_random_arch as rr_config

    overrides = dict(overrides or {})
    common.refuse_overrides(overrides, ("label_noise", "seed"), "set by the arms (label_noise 0 "
                            "real / 1 random; seed 0..seeds-1)")
    archs = (overrides["arch"],) if "arch" in overrides else tuple(archs or rr_config.ARCHS)
    out = []
    for dataset, base in common.dataset_bases(rr_config, scale, overrides,
                                              "real_vs_random_arch"):
        for arch in archs:
            for noise, name in ARMS:
                out += common.seeded_arms(
                    f"{dataset}/{arch}/{name}", f"{name} labels",
                    f"{dataset}/{arch}", config_schema.apply_overrides(
                        base, {"arch": arch, "label_noise": noise}), seeds, check_config)
    return out


COLUMNS = (
    Column("train_pairwise_init", "(r − 1)/(m − 1) train, init", ".4f"),
    Column("train_pairwise_early", "(r − 1)/(m − 1) train, early", ".4f"),
    Column("train_pairwise_end", "(r − 1)/(m − 1) train, end", ".4f"),
    Column("test_pairwise_end", "(r − 1)/(m − 1) test, end", ".4f"),
    Column("train_coh_end", "m-coh. train, end", ".2f"),
    Column("train_accuracy", "train acc (vs training label)"),
    Column("test_accuracy", "test acc"),
)


def comparisons(arms_):
    """Real vs random labels per dataset and architecture (same seed: same initial weights)."""
    return common.planned_pairs(arms_, (("real", "random"),))


def rules(arms_):
    return [statistics.PairedRule(f"{a.rsplit('/', 1)[0]}: real labels more coherent early",
                                  "train_pairwise_early", a, c, prediction="higher")
            for a, c in comparisons(arms_)]


def analyses(runs):
    """Ratios and crossings of the pairwise coherence, real against random (`crossings`)."""
    return crossings.analyses(runs, comparisons([a for a, _ in runs]))


def setting(runs):
    lines = []
    for dataset, chosen in plots.per_dataset(runs):
        c, m = chosen[0][1]["config"], chosen[0][1]["summary"]["m"]
        lines += [f"{dataset}: SGD lr {c['learning_rate']}, momentum {c['momentum']}, batch "
                  f"{c['batch_size']}, {c['epochs']} epochs; random labels: 100 % "
                  f"({c['noise_kind']}); m = {m} training examples (the arm's labels; "
                  f"{'the whole set' if not c['coherence_samples'] else 'a fixed sample'}) and "
                  "test examples (real labels), the same for every arm; early = epoch "
                  f"{c['early_epoch']:g}. MLP {c['depth']} × {c['width']}; "
                  f"CNN filters {tuple(c['cnn_filters'])} + dense {c['dense_width']}; ResNet "
                  f"stages {tuple(c['resnet_filters'])} × {c['resnet_blocks']} BN basic "
                  "block(s). Compared: the pairwise coherence (r − 1)/(m − 1).", ""]
    return lines


def figures(workdir, runs):
    keys = ((crossings.CURVE, "(r − 1)/(m − 1), train sample"),
            ("coherence/test/pairwise", "(r − 1)/(m − 1), test sample"),
            ("train_accuracy", "train acc. (fraction)"), ("test_accuracy", "test acc. (fraction)"))
    return [plots.curves_per_group(
        workdir, f"real_vs_random_arch_{dataset}.png", chosen, keys, x="epoch",
        x_label="epoch (log; 0 at 0.5)", log_x=10, row_of=lambda a: a.panel,
        title=f"{dataset}: real vs random labels per architecture")
        for dataset, chosen in plots.per_dataset(runs)]


EXPERIMENT = Experiment(
    name="real_vs_random_arch",
    title="Real vs random labels across architectures: pairwise coherence (arXiv 2008.01217)",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config), columns=COLUMNS, loop="graph",
    comparisons=comparisons, compared=("train_pairwise_init", "train_pairwise_early",
                                       "train_pairwise_end", "train_coh_end"),
    rules=rules, analyses=analyses, setting=setting, figures=figures,
    progress=("train_pairwise_init", "train_pairwise_early", "train_pairwise_end",
              "test_accuracy"))
run = EXPERIMENT.run_arm
