r"""The papers' experiments as lists of trainer configs ("arms"), plus what to tabulate and plot.

An experiment is a list of `Arm`s — each one `trainers.train` config trained into its own
sub-workdir — together with the `Metric`s of its `results.md` table and the `Figure`s of its PNGs.
`build(name, scale, seeds, overrides)` returns one; `trainers.reproduce` runs it.

| name             | paper (figure)                    | arms (per seed)                                                 |
|------------------|-----------------------------------|-----------------------------------------------------------------|
| `real_vs_random` | 2203.10036 Fig. 3; 2008.01217     | real labels vs 100 % random labels (`configs/real_vs_random.py`): |
|                  |                                   | m-coherence of fixed train / test samples (same m) at step 0,   |
|                  |                                   | every 9 steps and every epoch, whole model and per layer         |
| `memorisation`   | 2003.07422; 2002.10657 (winsor.)  | SGD, M3, RM3, RA3 and the update-count control `sgd_x3` (plain SGD, |
|                  |                                   | batch x 3 = M3's number of updates) at 0 / 25 / 50 % label noise;  |
|                  |                                   | winsorized SGD at 50 % noise (small scale: c = 2, 4, 8 %; the      |
|                  |                                   | `sgd` arm is c = 0)                                              |
| `easy_hard`      | 2003.07422                        | `configs/easy_hard.py`: probe run, easy / hard split, a run on each |
|                  |                                   | part tested on its own held-out half                             |
| `loss_fractions` | 2002.10657 (ICLR 2020)            | SGD at 25 % and 50 % noise; f^p / f^c of a fixed training sample |
|                  |                                   | and m-coherence of pristine / corrupted samples, at step 0,      |
|                  |                                   | every 21 steps (3 per epoch of 63 batches) and every epoch       |

Default seeds: 2 (real_vs_random, loss_fractions; memorisation: 18 arms × 2), 3 (easy_hard).

Beyond the papers: `grokking` and `double_descent` (issue 14) run their own resumable loops and are
registered in `trainers/beyond.py` (same `trainers.reproduce` command, `--scale=small|full`).

Step measurements (`coherence.monitor_every_steps`, `builders.StepMeasurements`) go to the
`step_history` of each arm's results.json; the table cells "step 0" / "after N steps" and the
`*_vs_step.png` figures read it, the "(last)" cells the per-epoch `history`.

Scales (`--scale`): `small` = the embedded MNIST-1D with the MLP of `configs/default.py`, epochs
cut to fit < 10 minutes per experiment on 2 CPU cores (`SMALL_SCALE`, `SMALL_SCALE_ARGS`);
`cifar10` / `imagenet` = `configs/cifar10_resnet18.py` / `configs/imagenet_resnet50.py`
(`configs/imagenet_easy_hard.py` for easy_hard): the authors' hyperparameters, all their epochs,
every arm of the experiment (these need the tfds data and accelerators).

With batch 64 and the nearest-rank percentile, winsorizing c = 1 % and c = 2 % clip the same single
extreme value per side (rank round(0.01·63) = round(0.02·63) = 1), hence c = 2, 4, 8 (1, 3 and 5
values per side) at the small scale.

Arm conventions (all scales):
* M3 / RM3 / RA3 and the `sgd` / `sgd_x3` baselines of `memorisation` use plain SGD (momentum 0),
  as the authors' M3/RM3 code; the base config's weight decay becomes coupled L2 (`optimizer.l2`,
  added before the median) for the robust optimizers and stays Keras' decoupled `weight_decay`
  for plain SGD, which for momentum-free SGD is the same update (w -= lr (g + λ w)).
* `sgd_x3` keeps the learning rate of `sgd` and triples the batch: it makes one update per 3·B
  examples, exactly as M3 (which consumes 3 batches of B per update).
* `seed` seeds weights, label noise and data order; arm `X` seed `s` lives in `WORKDIR/X/seed<s>`.
"""

import copy
import dataclasses
import math

import ml_collections

SCALES = ("small", "cifar10", "imagenet")
REDUCERS = ("first", "last", "max", "min", "mean")
SERIES = ("history", "step_history")  # per-epoch logs / per-step measurements of results.json


# ----------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Arm:
    """One trainer run: `config` trained into `WORKDIR/<group>/seed<seed>`.

    group: arm name shared by all seeds (a relative path, e.g. "noise50/m3"); results are aggregated
        over the seeds of a group. label: legend / table name ("M3"). panel: figure row / table
        section the arm belongs to ("50% noise"). linestyle: matplotlib style of its curves.
    """

    group: str
    label: str
    panel: str
    seed: int
    config: ml_collections.ConfigDict
    linestyle: str = "-"

    @property
    def path(self) -> str:
        """Sub-directory of the experiment workdir, `<group>/seed<seed>`."""
        return f"{self.group}/seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One table column, computed from an arm's `results.json` (see `metric_value`).

    source: ("final", key)            -> results["final"][key]
            ("history", key, reducer) -> reducer over results["history"][key] (None entries dropped)
            ("step_history", key, reducer) -> the same over results["step_history"][key] (the
                                         measurements every `coherence.monitor_every_steps` batches)
            ("step_at", key, step)    -> results["step_history"][key] at step `step` (None if absent)
            ("step_of_max", key)      -> the step at which results["step_history"][key] is largest
            ("dataset", key)          -> results["dataset"][key] (e.g. "num_train")
            ("updates",)              -> number of optimizer updates the arm made (`count_updates`)
    """

    name: str
    header: str
    source: tuple
    fmt: str = ".3f"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One PNG: a grid with a row per panel and a column per curve; every arm of the row is a curve.

    columns: ((history key, y label), ...); a key with one `*` (e.g. "coherence/train/*/m_coherence")
    becomes one column per matching history key (per layer). x: "epoch" or a history key (e.g.
    "loss", "step") whose seed-mean is the x coordinate. groups: the arm groups drawn (None: all).
    series: "history" (one point per epoch) or "step_history" (one per step measurement).
    """

    file: str
    title: str
    columns: tuple
    groups: tuple = None
    x: str = "epoch"
    x_label: str = "epoch"
    ylim: tuple = None
    log_y: bool = False
    series: str = "history"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Arms to train, and the table / figures to make of them."""

    name: str
    title: str
    description: str
    arms: tuple
    metrics: tuple
    figures: tuple
    sub_runs: tuple = ()   # sub-workdirs of an arm whose histories join its own as "<sub>/<key>"

    def groups(self) -> list:
        """Arm groups in definition order, each once."""
        return list(dict.fromkeys(arm.group for arm in self.arms))


# ----------------------------------------------------------------------------------------------
# Reading numbers out of results.json
# ----------------------------------------------------------------------------------------------

def count_updates(result: dict) -> int:
    """Optimizer updates made by the run of `result` (a results.json dict).

    Batches b = epochs × ceil(n / B) (or floor with drop_remainder). SGD / Adam: b. M3 with k groups
    in `fit` (consecutive batches): floor(b / k). RM3 / RA3 with window k: max(0, b − k + 1).
    """
    config, dataset = result["config"], result["dataset"]
    n, batch = dataset["num_train"], config["batch_size"]
    per_epoch = n // batch if config["drop_remainder"] else -(-n // batch)
    batches = per_epoch * result["epochs_completed"]
    name = config["optimizer"]["name"].lower()
    if name in ("sgd", "adam"):
        return batches
    if name.startswith("m"):
        groups = config["optimizer"]["groups"] if name == "m3" else int(name[1:])
        return batches // groups
    window = config["optimizer"]["window"] if name in ("rm3", "ra3") else int(name[2:])
    return max(0, batches - window + 1)


def metric_value(result: dict, metric: Metric):
    """The value of `metric` in one arm's results.json dict: a float, or None if not available."""
    kind = metric.source[0]
    if kind == "final":
        value = result["final"].get(metric.source[1])
        return None if value is None else float(value)
    if kind == "dataset":
        return float(result["dataset"][metric.source[1]])
    if kind == "updates":
        return float(count_updates(result))
    if kind in SERIES:
        _, key, reducer = metric.source
        values = [float(v) for v in result.get(kind, {}).get(key, []) if v is not None]
        if not values:
            return None
        return {"first": values[0], "last": values[-1], "max": max(values), "min": min(values),
                "mean": math.fsum(values) / len(values)}[reducer]
    if kind in ("step_at", "step_of_max"):
        series = result.get("step_history", {})
        pairs = [(s, float(v)) for s, v in zip(series.get("step", []),
                                                series.get(metric.source[1], []))
                 if v is not None]
        if kind == "step_at":
            return next((v for s, v in pairs if s == metric.source[2]), None)
        return float(max(pairs, key=lambda p: p[1])[0]) if pairs else None
    raise ValueError(f"metric {metric.name}: unknown source {metric.source!r}")


# ----------------------------------------------------------------------------------------------
# Base configs per scale
# ----------------------------------------------------------------------------------------------

# The config file each experiment starts from at the small scale (its feature fields — coherence
# monitor, easy/hard mode, ... — are carried over to the larger scales).
SMALL_CONFIGS = {
    "real_vs_random": "real_vs_random",
    "memorisation": "default",
    "easy_hard": "easy_hard",
    "loss_fractions": "default",
}
FEATURE_SUBTREES = ("mode", "coherence", "learning_times", "easy_hard")
# The config file of the larger scales; (scale, experiment) entries override the scale's default.
SCALE_CONFIGS = {
    "cifar10": "cifar10_resnet18",
    "imagenet": "imagenet_resnet50",
    ("imagenet", "easy_hard"): "imagenet_easy_hard",  # ResNet-18, 40k / 5k examples in memory
}


def _config_module(name):
    import importlib

    return importlib.import_module(f"configs.{name}").get_config()


def base_config(scale: str, experiment: str = "memorisation") -> ml_collections.ConfigDict:
    """The config every arm of `experiment` starts from, at `scale` (label noise 0, no sweep).

    small: `configs/<SMALL_CONFIGS[experiment]>.py`. cifar10 / imagenet: `configs/<SCALE_CONFIGS>.py`
    (the authors' recipes) with the feature fields (coherence monitor, easy/hard mode, ...) of the
    small config.
    """
    from trainers import builders

    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is unknown; allowed: {', '.join(SCALES)}")
    if experiment not in SMALL_CONFIGS:
        raise ValueError(f"experiment={experiment!r} is unknown; allowed: "
                         f"{', '.join(SMALL_CONFIGS)}")
    small = builders.add_feature_fields(_config_module(SMALL_CONFIGS[experiment]))
    if scale == "small":
        config = small
    else:
        name = SCALE_CONFIGS.get((scale, experiment), SCALE_CONFIGS[scale])
        config = builders.add_feature_fields(_config_module(name))
        for field in FEATURE_SUBTREES:
            config[field] = copy.deepcopy(small[field])
        if scale == "imagenet":  # splits are in-memory arrays (see configs/imagenet_easy_hard.py)
            config.max_train = config.max_train or 40_000
            config.max_test = config.max_test or 5_000
    if "sweep" in config:
        del config["sweep"]
    config.label_noise = 0.0
    return config


def sweep_values(config_name: str, field: str) -> tuple:
    """The `sweep.values` of `configs/<config_name>.py` (checked to sweep `field`)."""
    sweep = _config_module(config_name).sweep
    if sweep.field != field:
        raise ValueError(f"configs/{config_name}.py sweeps {sweep.field!r}, not {field!r}")
    return tuple(sweep["values"])


def apply_overrides(config, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `config` with `{"a.b": value}` fields set; ValueError naming an unknown field."""
    config = copy.deepcopy(config)
    for path, value in (overrides or {}).items():
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise ValueError(f"override {path}={value!r}: the config has no field {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {path}={value!r}: the config has no field {path!r}; "
                             f"fields: {', '.join(sorted(node.keys()))}")
        node[leaf] = value
    return config


def _with(config, **fields):
    """Copy of `config` with top-level / dotted (`a__b`) fields set."""
    return apply_overrides(config, {k.replace("__", "."): v for k, v in fields.items()})


def _noise_panel(noise: float) -> str:
    return f"{noise:.0%} noise"


def _noise_group(noise: float) -> str:
    return f"noise{round(noise * 100):02d}"


# ----------------------------------------------------------------------------------------------
# Optimizer arms (memorisation)
# ----------------------------------------------------------------------------------------------

METHODS = {  # name -> (label, optimizer.name, batch multiplier)
    "sgd": ("SGD", "sgd", 1),
    "m3": ("M3", "m3", 1),
    "rm3": ("RM3", "rm3", 1),
    "ra3": ("RA3", "ra3", 1),
    "sgd_x3": ("SGD, batch x3 (M3's update count)", "sgd", 3),
}


def optimizer_arm_config(base, method: str) -> ml_collections.ConfigDict:
    """`base` trained with `method` (a key of METHODS): plain SGD inside, coupled L2 for robust ones."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    _, optimizer, multiplier = METHODS[method]
    config = copy.deepcopy(base)
    decay = float(config.optimizer.weight_decay) + float(config.optimizer.l2)
    config.optimizer.name = optimizer
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.0 if optimizer != "sgd" else decay
    config.optimizer.l2 = decay if optimizer != "sgd" else 0.0
    config.batch_size = base.batch_size * multiplier
    return config


def winsorized_config(base, pct: float) -> ml_collections.ConfigDict:
    """`base` trained with winsorized SGD at `pct` percent per side (2002.10657).

    Winsorizing needs a static batch size, so these arms drop the last partial batch of every
    epoch (`drop_remainder=True`; with 4000 examples and batch 64: 32 examples an epoch, a
    different 32 every epoch) — the only difference to the SGD arm besides the winsorizing.
    """
    config = optimizer_arm_config(base, "sgd")
    config.drop_remainder = True
    config.optimizer.aggregation = "winsorize"
    config.optimizer.winsorize_pct = float(pct)
    return config


# ----------------------------------------------------------------------------------------------
# The experiments
# ----------------------------------------------------------------------------------------------

MEMORISATION_METRICS = (
    Metric("pristine", "pristine train acc", ("final", "pristine_train_accuracy")),
    Metric("corrupted", "corrupted train acc (vs noisy label)", ("final", "corrupted_train_accuracy")),
    Metric("test", "test acc", ("final", "test_accuracy")),
    Metric("best_test", "best test acc (any epoch)", ("history", "val_accuracy", "max")),
    Metric("updates", "updates", ("updates",), fmt=".0f"),
)
MEMORISATION_COLUMNS = (("pristine_accuracy", "pristine train accuracy"),
                        ("corrupted_accuracy", "corrupted train accuracy\n(vs noisy label)"),
                        ("val_accuracy", "test accuracy"))


def memorisation(base, seeds, noise_levels=(0.0, 0.25, 0.5),
                 methods=("sgd", "m3", "rm3", "ra3", "sgd_x3"), winsorize_pcts=None,
                 winsorize_noise=0.5, winsorize_max_train=None) -> Experiment:
    """Experiment 2: memorisation of noisy labels by SGD vs M3 / RM3 / RA3 / update-count control.

    winsorize_pcts: the c of the winsorized arms (None: the non-zero values of the sweep of
    `configs/winsorize.py`), trained at `winsorize_noise`. winsorize_max_train: if given, the
    winsorization sweep uses only the first that many training examples (per-example gradients
    are costly) and gets its own SGD arm (c = 0) on the same subset; else the SGD arm of the main
    grid at `winsorize_noise` is its c = 0.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"method={unknown[0]!r} is unknown; allowed: {', '.join(METHODS)}")
    if winsorize_pcts is None:
        winsorize_pcts = tuple(c for c in sweep_values("winsorize", "optimizer.winsorize_pct") if c)
    arms = []
    for noise in noise_levels:
        for method in methods:
            label = METHODS[method][0]
            for seed in seeds:
                config = _with(optimizer_arm_config(base, method), label_noise=noise, seed=seed)
                arms.append(Arm(f"{_noise_group(noise)}/{method}", label, _noise_panel(noise),
                                seed, config, "--" if method == "sgd_x3" else "-"))
    figures = [Figure("memorisation.png", "Memorisation of noisy labels (2003.07422)",
                      MEMORISATION_COLUMNS, groups=tuple(dict.fromkeys(a.group for a in arms)),
                      ylim=(0.0, 1.0))]
    winsor_arms, shown = _winsorization_arms(base, seeds, winsorize_pcts, winsorize_noise,
                                             winsorize_max_train)
    if winsor_arms:
        shown = [a.group for a in arms if a.group == shown] + [a.group for a in winsor_arms]
        figures.append(Figure("winsorization.png", "Winsorized gradient descent (2002.10657)",
                              MEMORISATION_COLUMNS, groups=tuple(dict.fromkeys(shown)),
                              ylim=(0.0, 1.0)))
        arms += winsor_arms
    description = (
        "Accuracy on the pristine and on the corrupted training examples (the latter against "
        "their *noisy* training labels: memorisation) and on the test set, after the last epoch, "
        "and the number of optimizer updates made. `SGD, batch x3` is the control: plain SGD "
        "making the same number of updates as M3 (one per 3 batches' worth of examples). "
        "Winsorized SGD clips every coordinate of the per-example gradients to its c-th and "
        "(100-c)-th percentile over the batch before averaging (c = 0: plain SGD); it drops the "
        "last partial batch of each epoch (static batch size).")
    if winsorize_max_train and winsor_arms:
        description += (f" The winsorization rows use only the first {winsorize_max_train} "
                        f"training examples (to save time), "
                        f"with their own c = 0 row on that subset.")
    return Experiment("memorisation", "Memorisation under label noise", description,
                      tuple(arms), MEMORISATION_METRICS, tuple(figures))


def _winsorization_arms(base, seeds, pcts, noise, max_train):
    """(arms, group of the c = 0 arm of the main grid to show with them, or None)."""
    if not pcts:
        return [], None
    group = _noise_group(noise)
    panel = _noise_panel(noise)
    runs = [(f"winsor{pct:g}", f"winsorized SGD, c={pct:g}%", winsorized_config(base, pct), ":")
            for pct in pcts]
    baseline = f"{group}/sgd"
    if max_train:
        group, panel, baseline = f"{group}_n{max_train}", f"{panel}, {max_train} examples", None
        plain = optimizer_arm_config(base, "sgd")
        plain.drop_remainder = True  # the same batches as the winsorized arms
        runs.insert(0, ("winsor0", "SGD (c=0)", plain, "-"))
    arms = []
    for name, label, config, style in runs:
        for seed in seeds:
            fields = {"label_noise": noise, "seed": seed}
            if max_train:
                fields["max_train"] = max_train
            arms.append(Arm(f"{group}/{name}", label, panel, seed, _with(config, **fields), style))
    return arms, baseline


def real_vs_random(base, seeds, noise_levels=None) -> Experiment:
    """Experiment 1: m-coherence of fixed train / test samples, real vs 100 % random labels.

    The monitor settings (sample size m, per layer, batch coherence) are those of `base`, i.e. of
    `configs/real_vs_random.py`; noise_levels default to its sweep (0.0, 1.0).
    """
    if noise_levels is None:
        noise_levels = sweep_values("real_vs_random", "label_noise")
    m = base.coherence.monitor_samples
    if not m:
        raise ValueError("real_vs_random needs coherence.monitor_samples > 0 (the sample size m)")
    arms = []
    for noise in noise_levels:
        name = {0.0: "real", 1.0: "random"}.get(noise, f"noise{round(noise * 100):02d}")
        label = {0.0: "real labels", 1.0: "random labels"}.get(noise, f"{noise:.0%} random labels")
        for seed in seeds:
            arms.append(Arm(name, label, "", seed, _with(base, label_noise=noise, seed=seed)))
    every = base.coherence.monitor_every_steps
    coherence_series = "step_history" if every else "history"
    coherence_key = "coherence/train/m_coherence"
    metrics = (
        Metric("coh_train_first", "m-coh. train sample (first measurement"
               + (", step 0)" if every else ", epoch 1)"), (coherence_series, coherence_key,
                                                             "first"), ".2f"),
    ) + ((
        Metric("coh_train_early", f"m-coh. train (after {every} steps)",
               ("step_at", coherence_key, every), ".2f"),
        Metric("coh_train_max", f"m-coh. train (max over steps, every {every})",
               ("step_history", coherence_key, "max"), ".2f"),
        Metric("coh_train_argmax", "step of that max", ("step_of_max", coherence_key), ".0f"),
    ) if every else (
        Metric("coh_train_max", "m-coh. train (max)", ("history", coherence_key, "max"), ".2f"),
    )) + (
        Metric("coh_train_last", "m-coh. train (last)",
               ("history", "coherence/train/m_coherence", "last"), ".2f"),
        Metric("coh_test_last", "m-coh. test sample (last)",
               ("history", "coherence/test/m_coherence", "last"), ".2f"),
        Metric("train_loss", "train loss (last)", ("history", "loss", "last")),
        Metric("train_acc", "train acc vs training label (last)", ("history", "accuracy", "last")),
        Metric("test", "test acc", ("final", "test_accuracy")),
    )
    columns = (("coherence/train/m_coherence", f"m-coherence, train sample (m={m})"),
               ("coherence/test/m_coherence", f"m-coherence, test sample (m={m})"),
               ("accuracy", "train accuracy (running, vs training label)"))
    figures = (
        Figure("coherence_vs_epoch.png", "m-coherence during training (2203.10036 Fig. 3)",
               columns, log_y=False),
        Figure("coherence_vs_loss.png", "m-coherence against training loss", columns[:2],
               x="loss", x_label="training loss (running mean of the epoch)"),
        Figure("coherence_per_layer.png", "m-coherence per layer, train sample",
               (("coherence/train/*/m_coherence", "m-coherence"),)),
    )
    if every:
        step_columns = columns[:2] + (("accuracy", "train accuracy (running, in the epoch)"),)
        figures = (
            Figure("coherence_vs_step.png", f"m-coherence every {every} steps (2203.10036 Fig. 3)",
                   step_columns, x="step", x_label="step (batches seen)", series="step_history"),
            Figure("coherence_vs_loss.png", "m-coherence against training loss", columns[:2],
                   x="loss", x_label="training loss (running mean of the epoch so far)",
                   series="step_history"),
            Figure("coherence_per_layer.png", "m-coherence per layer, train sample",
                   (("coherence/train/*/m_coherence", "m-coherence"),), x="step",
                   x_label="step (batches seen)", series="step_history"),
            figures[0],
        )
    description = (
        f"m-coherence (‖Σ g_i‖² / Σ ‖g_i‖²: 1 = orthogonal, m = identical) of the per-example "
        f"gradients of a fixed training sample and a fixed test sample of m = {m} examples each "
        f"(inference mode, training labels for the training sample), "
        + (f"before training, every {every} steps (batches) and after every epoch" if every
           else "after every epoch")
        + f", for real labels and for 100 % random labels (uniform over all classes, so ~10 % "
        f"stay correct). Same m for both arms.")
    return Experiment("real_vs_random", "Real vs random labels: m-coherence", description,
                      tuple(arms), metrics, figures)


def loss_fractions(base, seeds, noise_levels=(0.25, 0.5), monitor_samples=256,
                   monitor_every_steps=21) -> Experiment:
    """Experiment 4: pristine / corrupt shares f^p, f^c of the loss reduction, during training.

    f^p, f^c are measured on the fixed training sample of the coherence monitor (m =
    `monitor_samples` examples, mixed pristine / corrupted as the training set) before training,
    every `monitor_every_steps` batches and at every epoch end (0: epoch ends only).
    """
    every = int(monitor_every_steps)
    arms = []
    for noise in noise_levels:
        for seed in seeds:
            config = _with(base, label_noise=noise, seed=seed,
                           coherence__monitor_samples=monitor_samples,
                           coherence__monitor_every_steps=every)
            arms.append(Arm(f"{_noise_group(noise)}/sgd", f"SGD, {noise:.0%} noise", "", seed,
                            config))
    series = "step_history" if every else "history"
    metrics = (
        Metric("fp_first", "f^p (first measurement" + (", step 0)" if every else ", epoch 1)"),
               (series, "f_pristine", "first")),
    ) + ((Metric("fp_early", f"f^p (after {every} steps)", ("step_at", "f_pristine", every)),)
         if every else ()) + (
        Metric("fp_min", "f^p (min over measurements)", (series, "f_pristine", "min")),
        Metric("fp_last", "f^p (last)", ("history", "f_pristine", "last")),
        Metric("corrupted", "corrupted train acc (vs noisy label)",
               ("final", "corrupted_train_accuracy")),
        Metric("test", "test acc", ("final", "test_accuracy")),
    )
    figures = (Figure("loss_fractions.png", "Loss-reduction fractions (2002.10657)",
                      (("f_pristine", "f^p (pristine share of the loss reduction)"),
                       ("coherence/pristine/m_coherence", f"m-coherence, pristine sample"),
                       ("coherence/corrupted/m_coherence", f"m-coherence, corrupted sample"),
                       ("corrupted_accuracy", "corrupted train accuracy (vs noisy label)"))),)
    if every:
        figures = (Figure("loss_fractions_vs_step.png",
                          f"Loss-reduction fractions every {every} steps (2002.10657)",
                          (("f_pristine", "f^p (pristine share of the loss reduction)"),
                           ("coherence/pristine/m_coherence", "m-coherence, pristine sample"),
                           ("coherence/corrupted/m_coherence", "m-coherence, corrupted sample"),
                           ("loss", "training loss (running mean of the epoch so far)")),
                          x="step", x_label="step (batches seen)", series="step_history"),
                   ) + figures
    description = (
        f"f^p = ⟨g, g^p⟩ / ⟨g, g⟩ and f^c = 1 − f^p, with g^p / g^c the summed gradients of the "
        f"pristine / corrupted examples of a fixed training sample of m = {monitor_samples} "
        f"(g = g^p + g^c), "
        + (f"before training, every {every} steps and after every epoch" if every
           else "after every epoch")
        + f"; plus the m-coherence of fixed pristine and corrupted "
        f"samples (m = {monitor_samples} each). With noise p a gradient-blind split would give "
        f"f^p ≈ 1 − p.")
    return Experiment("loss_fractions", "Pristine vs corrupt loss-reduction fractions",
                      description, tuple(arms), metrics, figures)


def easy_hard(base, seeds) -> Experiment:
    """Experiment 3: easy / hard examples (defined by a short probe run), trained on separately.

    One arm per seed runs `mode="easy_hard"` (`trainers.train.train_easy_hard`): probe, split,
    then a run on each part in the arm's `probe/`, `easy/`, `hard/` sub-workdirs.
    """
    arms = tuple(Arm("easy_hard", "easy / hard", "", seed, _with(base, label_noise=0.0, seed=seed))
                 for seed in seeds)
    metrics = (
        Metric("num_easy", "easy examples", ("dataset", "num_easy"), ".0f"),
        Metric("num_hard", "hard examples", ("dataset", "num_hard"), ".0f"),
        Metric("easy_test", "easy: test acc (own held-out part)",
               ("final", "easy_test_accuracy")),
        Metric("hard_test", "hard: test acc (own held-out part)",
               ("final", "hard_test_accuracy")),
        Metric("easy_train", "easy: train acc (last)", ("history", "easy/accuracy", "last")),
        Metric("hard_train", "hard: train acc (last)", ("history", "hard/accuracy", "last")),
    )
    figures = (Figure("easy_hard.png", "Easy vs hard examples (2003.07422)",
                      (("easy/accuracy", "easy part: train accuracy (running)"),
                       ("easy/val_accuracy", "easy part: test accuracy"),
                       ("hard/accuracy", "hard part: train accuracy (running)"),
                       ("hard/val_accuracy", "hard part: test accuracy")), ylim=(0.0, 1.0)),)
    description = (
        f"A probe run of {base.easy_hard.probe_epochs} epochs labels every training example easy "
        f"(classified correctly at its end) or hard; each part is split "
        f"{1 - base.easy_hard.test_fraction:.0%} / {base.easy_hard.test_fraction:.0%} into its own "
        f"train / test, and a fresh model is trained on each part and tested on that part's own "
        f"held-out examples. Clean labels.")
    return Experiment("easy_hard", "Easy vs hard examples", description, arms, metrics, figures,
                      sub_runs=("probe", "easy", "hard"))


# name -> (builder, default number of seeds)
EXPERIMENTS = {
    "real_vs_random": (real_vs_random, 2),
    "memorisation": (memorisation, 2),
    "easy_hard": (easy_hard, 3),
    "loss_fractions": (loss_fractions, 2),
}
# Default builder arguments at the small scale (time budget; see the module docstring).
SMALL_SCALE_ARGS = {"memorisation": {"winsorize_pcts": (2.0, 4.0, 8.0)}}
SMALL_SCALE = {  # default overrides at the small scale (chosen for < 10 min on 2 busy cores)
    "real_vs_random": {"num_epochs": 20},
    "memorisation": {"num_epochs": 30},
    "easy_hard": {"num_epochs": 30},
    "loss_fractions": {"num_epochs": 30},
}


def build(name: str, scale: str = "small", seeds=None, overrides=None, **kwargs) -> Experiment:
    """Experiment `name` at `scale` with seeds 0..seeds-1 (default: the experiment's own).

    overrides: `{"field.path": value}` applied to the base config of every arm (after the scale's
    defaults, before the arm's own changes), e.g. `{"num_epochs": 1, "max_train": 256}`.
    kwargs go to the experiment's builder (e.g. `noise_levels=(0.5,)` for memorisation).
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment={name!r} is unknown; allowed: {', '.join(EXPERIMENTS)}")
    builder, default_seeds = EXPERIMENTS[name]
    seeds = default_seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive int (the number of seeds)")
    base = base_config(scale, name)
    if scale == "small":
        base = apply_overrides(base, SMALL_SCALE[name])
        kwargs = {**SMALL_SCALE_ARGS.get(name, {}), **kwargs}
    base = apply_overrides(base, overrides)
    return builder(base, tuple(range(seeds)), **kwargs)
