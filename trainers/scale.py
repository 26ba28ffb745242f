"""Does M3 / RM3 / winsorized GD suppress memorisation more as the training set grows? Per size n
the `ARMS` train through `memorisation_run`; rules on the matched pairs of `PAIRS`; `analyses`:
the trend against log10 n (`scale_trend`). docs/experiments/intro/scale.md; design §7.1."""

from cgh_tf import statistics
from configs import scale as scale_config

from . import beyond_common as common
from . import config_schema
from . import figures as fig
from . import graph_loop
from . import memorisation_run
from . import scale_trend
from . import update_rules
from .experiment import Column, Experiment

OPTIMIZERS = memorisation_run.OPTIMIZERS
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
ACCURACY_COLUMNS = (Column("corrupted_accuracy", "corrupted train acc (noisy label)"),
                    Column("corrupted_true_accuracy", "corrupted train acc (true label)"),
                    Column("pristine_accuracy", "pristine train acc"),
                    Column("test_accuracy", "test acc (last)"))
COMPARED = ("corrupted_accuracy", "pristine_accuracy", "test_accuracy")


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    need = common.require
    memorisation_run.check_config(config)
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


def _setup(config, run_dir, echo):
    return memorisation_run.setup(config, run_dir, echo)


def arms(scale="small", seeds=3, overrides=None, arm_names=None, sizes=None):
    """Arms `<dataset>/n<size>/<arm>` per dataset, size (`sizes` / `overrides["sizes"]`, else
    `overrides["train_size"]`, else `SIZES[scale][dataset]`) and arm (`arm_names` /
    `overrides["arms"]`, else `ARMS`)."""
    overrides = dict(overrides or {})
    sizes = overrides.pop("sizes", sizes)
    arm_names = common.chosen(overrides, "arms", arm_names, ARMS, "arm")
    common.refuse_overrides(overrides, ARM_FIELDS, f"set by each arm ({', '.join(ARMS)})")
    out = []
    for dataset, base in common.dataset_bases(scale_config, scale, overrides, "scale"):
        chosen = (tuple(sizes) if sizes else (overrides["train_size"],)
                  if "train_size" in overrides else scale_config.SIZES[scale][dataset])
        out += panel_arms(base, [(f"{dataset}/n{n:07d}", {"train_size": n}) for n in chosen],
                          [a for a in ARMS if a in arm_names], scale_config.WINSORIZE_PCT, seeds,
                          check_config)
    return out


def panel_arms(base, panels, arm_names, winsorize_pct, seeds, check):
    """Arms `<panel>/<arm>` (seeds 0..seeds−1, `check`ed) per (panel, changes of `base`) of
    `panels` and arm of `arm_names`, each `base` with the changes of `ARMS[arm]` ("x3": 3 × the
    base batch; "c": `winsorize_pct`)."""
    out = []
    for panel, changes in panels:
        config = config_schema.apply_overrides(base, changes)
        for arm in arm_names:
            arm_changes = {k: (3 * config.batch_size if v == "x3" else winsorize_pct if v == "c"
                               else v) for k, v in ARMS[arm][1].items()}
            out += common.seeded_arms(f"{panel}/{arm}", ARMS[arm][0], panel,
                                      config_schema.apply_overrides(config, arm_changes), seeds,
                                      check)
    return out


def comparisons(arms_):
    """Every PAIRS entry planned in a panel, paired by seed."""
    return [(a, c) for a, c, _ in common.planned_pairs(arms_, PAIRS)]


def rules(arms_):
    return [statistics.PairedRule(f"{a} suppresses memorisation vs {c}", "corrupted_accuracy",
                                  a, c, prediction="lower")
            for a, c, matched in common.planned_pairs(arms_, PAIRS) if matched]


def analyses(runs):
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


run = graph_loop.declared_run(_setup, check_config)

EXPERIMENT = Experiment(
    name="scale", title="Memorisation suppression vs training-set size (M3, RM3, winsorized GD)",
    default_seeds=5,
    arms=arms, run_arm=run, loop="graph",
    columns=(Column("updates", "updates", ".0f"),
             Column("corrupted_per_label_pair", "corrupted per (true, noisy) label pair", ".1f"),
             *ACCURACY_COLUMNS, Column("best_test_accuracy", "best test acc (logged epochs)")),
    comparisons=comparisons, compared=COMPARED,
    rules=rules, analyses=analyses, setting=setting, figures=figures,
    progress=("updates", "corrupted_accuracy", "pristine_accuracy", "test_accuracy"))
