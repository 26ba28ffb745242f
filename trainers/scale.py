"""Does M3 / RM3 / winsorized GD suppress memorisation more as the training set grows?

Per training-set size n (50 % uniform noise, fixed epochs) the `ARMS` train through
`memorisation_run.train_memorisation`; memorisation = corrupted train accuracy vs the noisy
labels. Declared: arm − matched control per n, paired by seed; rule: a robust arm suppresses
memorisation; `analyses`: suppression against log10 n (`scale_trend`).
docs/experiments/intro/scale.md; docs/design.md §7.1.
"""

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import memorisation_run
from . import scale_trend
from . import update_rules
from .experiment import Column, Experiment

MNIST5K_TRAIN = 4000
OPTIMIZERS = memorisation_run.OPTIMIZERS
DATASETS = ("mnist1d", "mnist5k")
# arm -> (label, changes of the base config; "x3" = 3 × the base batch, "c" = WINSORIZE_PCT)
ARMS = {
    "sgd": ("SGD", {"arm": "sgd"}),
    "m3": ("M3(SGD)", {"arm": "m3", "optimizer": "m3"}),
    "sgd_x3": ("SGD batch ×3 (M3's control)", {"arm": "sgd_x3", "batch_size": "x3"}),
    "rm3": ("RM3(SGD)", {"arm": "rm3", "optimizer": "rm3"}),
    "ra3": ("RA3(SGD) (RM3's control)", {"arm": "ra3", "optimizer": "ra3"}),
    "winsorize": ("winsorized SGD (control: SGD)", {"arm": "winsorize", "aggregation": "winsorize",
                                                    "winsorize_pct": "c"}),
}
ARM_FIELDS = ("arm", "optimizer", "aggregation", "winsorize_pct")  # set per arm, not by --set
ARM_SETTINGS = {arm: (changes.get("optimizer", "sgd"), changes.get("aggregation", "mean"))
                for arm, (_, changes) in ARMS.items()}  # arm -> (optimizer, aggregation)
# (arm, control, matched): compared per size; rules on the matched pairs
PAIRS = (("m3", "sgd_x3", True), ("m3", "sgd", False), ("rm3", "ra3", True),
         ("rm3", "sgd", False), ("winsorize", "sgd", True))


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    check_setting(config)
    check_arm(config)


def check_setting(config):
    """The checks of every field but the arm's (`check_arm`): shared with the experiments that
    train through `train_memorisation` with arms of their own."""
    from cgh_tf import data

    need = common.require
    need(config.dataset in DATASETS, f"dataset={config.dataset!r} is not available for scale; "
         f"allowed: {', '.join(DATASETS)}")
    common.require_ints(config, ("train_size", "width", "depth", "batch_size", "epochs",
                                 "checkpoint_every_logs"))
    need(config.dataset != "mnist1d" or config.train_size % 10 == 0,
         f"train_size={config.train_size!r} must be a multiple of 10 for mnist1d (generated "
         "with train_size / 10 examples per class)")
    need(config.dataset != "mnist5k" or config.train_size <= MNIST5K_TRAIN,
         f"train_size={config.train_size!r} must be <= {MNIST5K_TRAIN} for mnist5k")
    common.require_label_noise(config)
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    common.require_positive(config, ("learning_rate",))
    common.require_int_list(config, "log_epochs")


def check_arm(config):
    """The arm's fields: optimizer, aggregation and winsorize_pct as `ARM_SETTINGS` says."""
    need = common.require
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    common.require_one_of(config, "arm", ARM_SETTINGS)
    update_rules.check_aggregation(config)
    need((config.optimizer, config.aggregation) == ARM_SETTINGS[config.arm],
         f"arm={config.arm!r} needs optimizer={ARM_SETTINGS[config.arm][0]!r} and "
         f"aggregation={ARM_SETTINGS[config.arm][1]!r}, got {config.optimizer!r} and "
         f"{config.aggregation!r}")
    need(config.batch_size * OPTIMIZERS[config.optimizer] <= config.train_size,
         f"batch_size={config.batch_size} × {OPTIMIZERS[config.optimizer]} batches per update "
         f"({config.optimizer}) exceeds train_size={config.train_size}: no update in an epoch")


def _train(config, run_dir, echo):
    return memorisation_run.train_memorisation(config, run_dir, echo)


def arms(scale="small", seeds=3, overrides=None, arm_names=None, sizes=None):
    """Arms `<dataset>/n<size>/<arm>` (panel `<dataset>/n<size>`) per dataset
    (`common.dataset_bases`), size (`sizes` / `overrides["sizes"]`, else `overrides["train_size"]`,
    else `SIZES[scale][dataset]`) and arm (`arm_names` / `overrides["arms"]`, else `ARMS`)."""
    from configs import scale as scale_config

    overrides = dict(overrides or {})
    sizes = overrides.pop("sizes", sizes)
    arm_names = common.chosen(overrides, "arms", arm_names, ARMS, "arm")
    common.refuse_overrides(overrides, ARM_FIELDS, f"set by each arm ({', '.join(ARMS)})")
    out = []
    for dataset, base in common.dataset_bases(scale_config, scale, overrides, "scale"):
        for size in (tuple(sizes) if sizes else (overrides["train_size"],)
                     if "train_size" in overrides else scale_config.SIZES[scale][dataset]):
            for arm in (a for a in ARMS if a in arm_names):
                panel = f"{dataset}/n{size:07d}"
                config = config_schema.apply_overrides(base, {"train_size": size})
                out += common.seeded_arms(f"{panel}/{arm}", ARMS[arm][0], panel,
                                          arm_config(config, arm, scale_config.WINSORIZE_PCT),
                                          seeds, check_config)
    return out


def arm_config(base, arm, winsorize_pct):
    """`base` with the changes of `ARMS[arm]` ("x3": 3 × the base batch; "c": `winsorize_pct`)."""
    changes = {k: (3 * base.batch_size if v == "x3" else winsorize_pct if v == "c" else v)
               for k, v in ARMS[arm][1].items()}
    return config_schema.apply_overrides(base, changes)


def comparisons(arms_):
    """Every PAIRS entry planned at a (dataset, size), paired by seed."""
    return [(a, c) for a, c, _ in common.planned_pairs(arms_, PAIRS)]


def rules(arms_):
    return [statistics.PairedRule(f"{a} suppresses memorisation vs {c}", "corrupted_accuracy",
                                  a, c, prediction="lower")
            for a, c, matched in common.planned_pairs(arms_, PAIRS) if matched]


def analyses(runs):
    """The suppression trend against log10 n per dataset (`scale_trend.analyses`)."""
    from configs import scale as scale_config

    return scale_trend.analyses(runs, PAIRS, scale_config.IMAGENET_TRAIN_SIZE)


def setting(runs):
    """The setting, with the corrupted examples per (true, noisy) label pair at each n."""
    first = runs[0][1]["config"]
    per_n = {a.panel: r for a, r in runs}
    density = ", ".join(f"{p}: {r['num_corrupted']:,} corrupted, "
                        f"{r['summary']['corrupted_per_label_pair']:.1f} per pair (fewest "
                        f"{r['summary']['label_pair_min']})" for p, r in per_n.items())
    return [f"MLP {first['depth']} × {first['width']} ReLU, SGD lr {first['learning_rate']} (no "
            f"momentum), batch B = {first['batch_size']} (SGD ×3: 3B), {first['epochs']} epochs "
            f"at every n, {first['label_noise']:.0%} label noise ({first['noise_kind']}). "
            "Corrupted train accuracy is against the *noisy* labels (memorisation). Corrupted "
            "examples per (true, noisy) label pair, K(K − 1) pairs: " + density + ".", ""]


def figures(workdir, runs):
    from . import figures as fig

    keys = (("corrupted_accuracy", "corrupted train acc. (noisy label, fraction)"),
            ("pristine_accuracy", "pristine train acc. (fraction)"),
            ("test_accuracy", "test acc. (fraction)"))
    files = []
    for dataset, chosen in fig.per_dataset(runs):
        files.append(fig.curves_per_group(
            workdir, f"scale_{dataset}_curves.png", chosen, keys, x="epoch", x_label="epoch",
            title=f"{dataset}: accuracy vs epoch per arm and n", row_of=lambda a: a.panel))
        files.append(fig.summary_vs_axis(
            workdir, f"scale_{dataset}_suppression.png", chosen, keys, axis="train_size",
            x_label="training examples n (log10)", log_x=10, series=lambda a: a.label,
            title=f"{dataset}: last-epoch accuracy vs training-set size"))
    return files


run = common.resumable(_train, check_config)

EXPERIMENT = Experiment(
    name="scale", title="Memorisation suppression vs training-set size (M3, RM3, winsorized GD)",
    arms=arms, run_arm=run, loop="graph",
    columns=(Column("updates", "updates", ".0f"),
             Column("corrupted_per_label_pair", "corrupted per (true, noisy) label pair", ".1f"),
             Column("corrupted_accuracy", "corrupted train acc (noisy label)"),
             Column("corrupted_true_accuracy", "corrupted train acc (true label)"),
             Column("pristine_accuracy", "pristine train acc"),
             Column("test_accuracy", "test acc (last)"),
             Column("best_test_accuracy", "best test acc (logged epochs)")),
    comparisons=comparisons, compared=("corrupted_accuracy", "pristine_accuracy", "test_accuracy"),
    rules=rules, analyses=analyses, setting=setting, figures=figures,
    progress=("updates", "corrupted_accuracy", "pristine_accuracy", "test_accuracy"))
