r"""Real vs random labels across architectures: m-coherence along training (arXiv 2008.01217).

One run (`run(config, run_dir)`): architecture `config.arch` (MLP, CNN, small BN ResNet; Conv1D
versions on MNIST-1D's 40-long signals, Conv2D on mnist5k's 28×28×1 digits) trained with SGD +
momentum on `cgh_tf.data.load(dataset, label_noise=...)`: real labels (0.0) or 100 % random labels
(1.0, uniform over all classes). At each epoch of `log_epochs` (0 = before training; fractions of
an epoch are rounded to the nearest update, so the first epoch is logged densely) it logs the
training loss / accuracy (whole training split, vs the training labels), test loss / accuracy, and
the exact m-coherence and α, overall and per layer (`cgh_tf.coherence.measure`, inference mode,
so BatchNormalization uses its moving statistics) of

| sample | examples | labels |
|---|---|---|
| `coherence/train` | m fixed training examples (`sample_seed`; same indices for every arm) | the arm's training labels (random for the random arm) |
| `coherence/test` | m fixed test examples (same for every arm) | the real test labels |

with the same m (`coherence_samples`) for every arm. Resumable: a checkpoint (model incl. BN
statistics, optimizer, update count, curves) every `checkpoint_every_logs` log points
(`graph_loop.run_logged` in updates). Batch order: epoch e is the permutation
`default_rng([seed, e])`, cut into `batch_size` chunks (the last one partial,
`graph_loop.epoch_trainer`), so a run resumed mid-epoch sees the same batches.

The experiment: per dataset and architecture one real and one random arm per seed; seed s of both
arms starts from the same initial weights. Declared: real − random training-sample m-coherence
at init / `early_epoch` / the end, paired by seed (rule: real higher early); `analyses` gives the
ratio real / random (per seed), the largest ratio over the logged epochs > 0, and when the curves
cross (`crossing`, on the mean curves and per seed).
"""

import math
import time

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import graph_loop
from .experiment import Arm, Column, Experiment

ARCH_NAMES = ("mlp", "cnn", "resnet")
DATASET_NAMES = ("mnist1d", "mnist5k")
ARM_NAMES = {0.0: "real", 1.0: "random"}


def build_model(config, input_shape, num_classes):
    """MLP / CNN / BN ResNet by `config.arch`; 1-D (Conv1D) for rank-1 inputs, else 2-D."""
    import keras

    layers = keras.layers
    inputs = keras.Input(tuple(input_shape), name="x")
    if config.arch == "mlp":
        h = layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
        for i in range(int(config.depth)):
            h = layers.Dense(int(config.width), activation="relu", name=f"dense{i + 1}")(h)
        return keras.Model(inputs, layers.Dense(num_classes, name="out")(h), name="mlp")
    h = inputs
    if len(input_shape) == 1:
        h = layers.Reshape(tuple(input_shape) + (1,), name="add_channel")(h)
    one_d = len(h.shape) == 3
    conv = layers.Conv1D if one_d else layers.Conv2D
    pool = layers.MaxPooling1D if one_d else layers.MaxPooling2D
    gap = layers.GlobalAveragePooling1D if one_d else layers.GlobalAveragePooling2D
    if config.arch == "cnn":
        for i, filters in enumerate(config.cnn_filters):
            h = conv(int(filters), 3, padding="same", activation="relu", name=f"conv{i + 1}")(h)
            h = pool(2, name=f"pool{i + 1}")(h)
        h = layers.Flatten(name="flatten")(h)
        h = layers.Dense(int(config.dense_width), activation="relu", name="dense1")(h)
        return keras.Model(inputs, layers.Dense(num_classes, name="out")(h), name="cnn")

    def conv_bn(x, filters, kernel, strides, name):
        x = conv(filters, kernel, strides=strides, padding="same", use_bias=False,
                 kernel_initializer="he_normal", name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=float(config.bn_momentum), name=f"{name}_bn")(x)

    filters = [int(f) for f in config.resnet_filters]
    h = layers.Activation("relu", name="stem_relu")(conv_bn(h, filters[0], 3,
                                                                  int(config.resnet_stem_stride),
                                                                  "stem"))
    for stage, f in enumerate(filters):
        for block in range(int(config.resnet_blocks)):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage + 1}b{block + 1}"
            shortcut = h
            if strides != 1 or h.shape[-1] != f:
                shortcut = conv_bn(h, f, 1, strides, f"{name}_proj")
            y = layers.Activation("relu", name=f"{name}_relu")(conv_bn(h, f, 3, strides,
                                                                       f"{name}_1"))
            y = conv_bn(y, f, 3, 1, f"{name}_2")
            h = layers.Activation("relu", name=f"{name}_out")(
                layers.Add(name=f"{name}_add")([shortcut, y]))
    h = gap(name="gap")(h)
    return keras.Model(inputs, layers.Dense(num_classes, name="out")(h), name="resnet")


def arm_name(label_noise):
    return ARM_NAMES.get(float(label_noise), f"noise{round(float(label_noise) * 100):03d}")


def log_steps(log_epochs, epochs, steps_per_epoch):
    """{update count: epoch} of the log points: each epoch of `log_epochs` up to `epochs`
    (later ones dropped, so `--set=epochs=N` needs no new list) rounded to the nearest update,
    plus the end of training; the epoch recorded is the true one, update / steps_per_epoch."""
    steps = {int(round(float(e) * steps_per_epoch)) for e in log_epochs if e <= epochs}
    steps.add(int(epochs) * steps_per_epoch)
    return {s: s / steps_per_epoch for s in sorted(steps)}


def _train(config, run_dir, echo):
    """One run (finished runs and bad configs are handled by `common.resumable`)."""
    import keras
    import tensorflow as tf

    from cgh_tf import coherence, data, optimizers

    started = time.time()
    data_seed = int(config.seed) if int(config.data_seed) < 0 else int(config.data_seed)
    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=data_seed,
                   max_train=int(config.max_train) or None, max_test=int(config.max_test) or None)
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    m = int(config.coherence_samples)
    if m > len(x) or m > len(x_test):
        raise ValueError(f"coherence_samples={m} exceeds the {len(x)} training / {len(x_test)} "
                         f"test examples of {config.dataset}")
    train_idx = common.sample(len(x), m, config.sample_seed, 1)
    test_idx = common.sample(len(x_test), m, config.sample_seed, 2)
    samples = {"train": (x[train_idx], y[train_idx]), "test": (x_test[test_idx], y_test[test_idx])}
    keras.utils.set_random_seed(int(config.seed))
    model = build_model(config, ds.input_shape, ds.num_classes)
    optimizer = optimizers.build("sgd", float(config.learning_rate),
                                 momentum=float(config.momentum))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    n = len(x)
    train = graph_loop.epoch_trainer(model, optimizer, loss_fn, tf.constant(x), tf.constant(y),
                                     int(config.batch_size))
    steps_per_epoch = train.batches_per_epoch
    per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction=None)

    @tf.function(reduce_retracing=True)
    def evaluate(xs, ys):  # (sum of losses, number correct) in inference mode
        logits = model(xs, training=False)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ys)
        return (tf.reduce_sum(per_example_loss(ys, logits)),
                tf.reduce_sum(tf.cast(correct, tf.float32)))

    def loss_accuracy(xs, ys, chunk=1000):
        total_loss, total_correct = 0.0, 0.0
        for start in range(0, len(xs), chunk):
            loss_sum, correct = evaluate(tf.constant(xs[start:start + chunk]),
                                         tf.constant(ys[start:start + chunk]))
            total_loss += float(loss_sum)
            total_correct += float(correct)
        return total_loss / len(xs), total_correct / len(xs)

    points = log_steps(config.log_epochs, int(config.epochs), steps_per_epoch)

    def log(step):
        row = {"step": step, "epoch": points[step]}
        for split, (xs, ys) in (("train", (x, y)), ("test", (x_test, y_test))):
            row[f"{split}_loss"], row[f"{split}_accuracy"] = loss_accuracy(xs, ys)
        for sample, (xs, ys) in samples.items():
            stats = coherence.measure(model, xs, ys, loss=loss_fn, per_layer=True, batch_size=m)
            if stats.m != m:
                raise RuntimeError(f"measured m={stats.m}, expected {m}")
            row.update(common.coherence_row(f"coherence/{sample}", stats))
        if echo:
            echo(f"  {run_dir} epoch {points[step]:g} (update {step}): train acc "
                 f"{row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} m-coh. train "
                 f"{row['coherence/train/m_coherence']:.3f}")
        return row

    logged = [s for s in points if s > 0]
    curves = graph_loop.run_logged(
        run_dir, config.to_dict(), model, optimizer,
        graph_loop.step_advancer(train, config.seed, n), log, total=max(points),
        log_points=points, checkpoint_points=logged[int(config.checkpoint_every_logs) - 1::
                                                    int(config.checkpoint_every_logs)],
        echo=echo, unit="update")
    summary = run_summary(curves, float(config.early_epoch))
    summary["num_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    summary["m"] = m
    return common.finish(run_dir, config.to_dict(), curves, summary, started, num_train=n,
                         num_test=len(x_test), num_corrupted=int(ds.train.corrupted.sum()),
                         steps_per_epoch=steps_per_epoch, layers=_layers(curves))


def _layers(curves):
    """Layer names of the per-layer train-sample curves, in logging order."""
    prefix, suffix = "coherence/train/", "/m_coherence"
    return [k[len(prefix):-len(suffix)] for k in curves
            if k.startswith(prefix) and k.endswith(suffix) and k != prefix + "m_coherence"]


def _at(curves, key, epoch):
    """The value of `key` logged at `epoch`, None when that epoch was not logged."""
    for e, v in zip(curves["epoch"], curves[key]):
        if e is not None and abs(e - epoch) < 1e-9:
            return v
    return None


def run_summary(curves, early_epoch):
    """Numbers of one run: m-coherence of the train / test samples at init (epoch 0), at
    `early_epoch`, at the end, and the max over logged epochs (with its epoch); final train / test
    loss and accuracy. A point that was not logged gives None, never 0."""
    summary = {}
    for sample in ("train", "test"):
        key = f"coherence/{sample}/m_coherence"
        summary[f"{sample}_coh_init"] = _at(curves, key, 0.0)
        summary[f"{sample}_coh_early"] = _at(curves, key, early_epoch)
        summary[f"{sample}_coh_end"] = curves[key][-1]
        values = np.array([np.nan if v is None else v for v in curves[key]], dtype=float)
        best = int(np.nanargmax(values)) if np.isfinite(values).any() else None
        summary[f"{sample}_coh_max"] = None if best is None else float(values[best])
        summary[f"{sample}_coh_epoch_of_max"] = None if best is None else curves["epoch"][best]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        summary[key] = curves[key][-1]
    return summary


def crossings(epochs, real, random):
    """(sign, [epochs]) of the real and random curves, from the logged epochs > 0 where both
    exist: sign = +1 if real > random at the first such epoch where they differ, -1 if below, 0 if
    never different (or nothing logged); the list holds every logged epoch at which the
    difference has the opposite sign of the previous nonzero one (the curves crossed between it
    and the previous logged epoch)."""
    sign, current, flips = 0, 0, []
    for e, a, b in zip(epochs, real, random):
        if e is None or e <= 0 or a is None or b is None or math.isnan(a) or math.isnan(b):
            continue
        d = (a > b) - (a < b)
        if d == 0:
            continue
        if sign == 0:
            sign = d
        elif d != current:
            flips.append(e)
        current = d
    return sign, flips


def crossing(epochs, real, random):
    """(sign, first crossing epoch or None): see `crossings`."""
    sign, flips = crossings(epochs, real, random)
    return sign, (flips[0] if flips else None)


def ratio_curve(real, random):
    """real / random pointwise (None where either is missing or random is 0)."""
    return [None if a is None or b is None or b == 0 else a / b for a, b in zip(real, random)]


def max_ratio(epochs, real, random):
    """(largest real / random over logged epochs > 0, its epoch); (None, None) if none."""
    best = (None, None)
    for e, r in zip(epochs, ratio_curve(real, random)):
        if e is not None and e > 0 and r is not None and (best[0] is None or r > best[0]):
            best = (r, e)
    return best


def _mean_curve(results, key):
    arr = np.array([[np.nan if v is None else v for v in r["curves"][key]] for r in results],
                    dtype=float)
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, 0) if arr.size else arr
    return [None if not np.isfinite(v) else float(v) for v in mean]


def compare(real_runs, random_runs):
    """Group numbers of one dataset × architecture: ratios real / random per seed (paired by
    seed) at init / early / end, the largest ratio, and the crossing (mean curves and per seed)."""
    key = "coherence/train/m_coherence"
    by_seed = {r["config"]["seed"]: r for r in random_runs}
    pairs = [(r, by_seed[r["config"]["seed"]]) for r in real_runs if r["config"]["seed"] in by_seed]
    out = {"seeds": [a["config"]["seed"] for a, _ in pairs]}
    for when in ("init", "early", "end"):
        out[f"ratio_{when}"] = [None if a["summary"][f"train_coh_{when}"] is None
                                or not b["summary"][f"train_coh_{when}"]
                                else a["summary"][f"train_coh_{when}"] / b["summary"][
                                    f"train_coh_{when}"] for a, b in pairs]
    out["max_ratio"], out["epoch_of_max_ratio"], out["crossing_sign"], out["crossing_epoch"] = \
        [], [], [], []
    for a, b in pairs:
        if a["curves"]["epoch"] != b["curves"]["epoch"]:
            raise ValueError("real and random runs logged at different epochs")
        r, e = max_ratio(a["curves"]["epoch"], a["curves"][key], b["curves"][key])
        s, c = crossing(a["curves"]["epoch"], a["curves"][key], b["curves"][key])
        out["max_ratio"].append(r)
        out["epoch_of_max_ratio"].append(e)
        out["crossing_sign"].append(s)
        out["crossing_epoch"].append(c)
    epochs = real_runs[0]["curves"]["epoch"]
    real_mean, random_mean = _mean_curve(real_runs, key), _mean_curve(random_runs, key)
    out["mean_curve_crossing_sign"], out["mean_curve_crossing_epoch"] = crossing(
        epochs, real_mean, random_mean)
    out["mean_curve_crossings"] = crossings(epochs, real_mean, random_mean)[1]
    out["mean_curve_max_ratio"], out["mean_curve_epoch_of_max_ratio"] = max_ratio(
        epochs, real_mean, random_mean)
    return out


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    def is_int(v):
        return config_schema.is_int(v, -2**63)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need(config.dataset in DATASET_NAMES, f"dataset={config.dataset!r} is unknown for "
         f"real_vs_random_arch; allowed: {', '.join(DATASET_NAMES)}")
    common.require_one_of(config, "arch", ARCH_NAMES)
    need(is_num(config.label_noise) and 0 <= config.label_noise <= 1,
         f"label_noise={config.label_noise!r} must be in [0, 1] (0 real, 1 random labels)")
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    for field in ("width", "depth", "dense_width", "resnet_blocks", "resnet_stem_stride",
                  "batch_size", "epochs",
                  "coherence_samples", "checkpoint_every_logs"):
        need(is_int(config[field]) and config[field] >= 1,
             f"{field}={config[field]!r} must be an int >= 1")
    for field in ("max_train", "max_test", "sample_seed"):
        need(is_int(config[field]) and config[field] >= 0,
             f"{field}={config[field]!r} must be an int >= 0")
    need(is_int(config.data_seed) and config.data_seed >= -1,
         f"data_seed={config.data_seed!r} must be an int >= 0, or -1 for the run's seed")
    need(is_int(config.seed) and config.seed >= 0, f"seed={config.seed!r} must be an int >= 0")
    for field in ("cnn_filters", "resnet_filters"):
        need(isinstance(config[field], (tuple, list)) and len(config[field]) >= 1
             and all(is_int(f) and f >= 1 for f in config[field]),
             f"{field}={config[field]!r} must be a non-empty tuple of ints >= 1")
    need(is_num(config.learning_rate) and config.learning_rate > 0,
         f"learning_rate={config.learning_rate!r} must be a number > 0")
    for field in ("momentum", "bn_momentum"):
        need(is_num(config[field]) and 0 <= config[field] < 1,
             f"{field}={config[field]!r} must be in [0, 1)")
    need(isinstance(config.log_epochs, (tuple, list))
         and all(is_num(e) and e >= 0 for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be numbers >= 0")
    need(is_num(config.early_epoch) and config.early_epoch in tuple(config.log_epochs)
         and config.early_epoch <= config.epochs,
         f"early_epoch={config.early_epoch!r} must be one of log_epochs and <= epochs "
         f"({config.epochs})")
    for field in ("max_train", "max_test"):
        need(config[field] == 0 or config[field] >= config.coherence_samples,
             f"{field}={config[field]} is smaller than coherence_samples="
             f"{config.coherence_samples}")


def arms(scale="small", seeds=3, overrides=None, archs=None):
    """Arms "dataset/arch/real|random" (panel "dataset/arch"); every config checked.

    Datasets: `DATASETS[scale]`, or only `overrides["dataset"]`; architectures: `ARCHS`, or only
    `overrides["arch"]`, or `archs`; config = base ← `SCALES[scale]` ←
    `DATASET_CHANGES[scale][dataset]` ← `overrides` ← the arm's label_noise and seed."""
    from configs import real_vs_random_arch as rr_config

    overrides = dict(overrides or {})
    for field in ("label_noise", "seed"):
        if field in overrides:
            raise ValueError(f"{field} is set by the arms (label_noise 0 real / 1 random; seed "
                             f"0..seeds-1) and cannot be overridden")
    archs = (overrides["arch"],) if "arch" in overrides else tuple(archs or rr_config.ARCHS)
    out = []
    for dataset, base in common.dataset_bases(rr_config, scale, overrides,
                                              "real_vs_random_arch"):
        for arch in archs:
            for noise in (0.0, 1.0):
                config = config_schema.apply_overrides(base, {"arch": arch, "label_noise": noise})
                check_config(config)
                out += [Arm(f"{dataset}/{arch}/{arm_name(noise)}", f"{arm_name(noise)} labels",
                            f"{dataset}/{arch}", seed,
                            config_schema.apply_overrides(config, {"seed": seed}))
                        for seed in range(seeds)]
    return out


def _fmt(value, fmt):
    return "n/a" if value is None else format(value, fmt)


def _crossing_text(sign, epoch):
    if sign == 0:
        return "never differ"
    above = "real > random" if sign > 0 else "real < random"
    return f"{above}, cross at {epoch:.3g}" if epoch is not None else f"{above}, never cross"


COLUMNS = (
    Column("train_coh_init", "m-coh. train, init", ".2f"),
    Column("train_coh_early", "m-coh. train, early", ".2f"),
    Column("train_coh_end", "m-coh. train, end", ".2f"),
    Column("test_coh_end", "m-coh. test, end", ".2f"),
    Column("train_accuracy", "train acc (vs training label)"),
    Column("test_accuracy", "test acc"),
)


def comparisons(arms_):
    """Real vs random labels per dataset and architecture (same seed: same initial weights)."""
    panels = dict.fromkeys(a.panel for a in arms_)
    groups = {a.group for a in arms_}
    return [(f"{p}/real", f"{p}/random") for p in panels
            if f"{p}/real" in groups and f"{p}/random" in groups]


def rules(arms_):
    return [statistics.PairedRule(f"{a.rsplit('/', 1)[0]}: real labels more coherent early",
                                  "train_coh_early", a, c, prediction="higher")
            for a, c in comparisons(arms_)]


def analyses(runs):
    """Ratios real / random per seed, the largest ratio and the crossings (`compare`); refuses
    arms measured at different m."""
    ms = {r["summary"]["m"] for _, r in runs}
    if len(ms) != 1:
        raise ValueError(f"the arms measured coherence on samples of different m: {sorted(ms)}")
    by_group = {}
    for a, r in runs:
        by_group.setdefault(a.group, []).append(r)
    out, lines = {}, ["Real / random ratio of the training-sample m-coherence (per seed, paired by "
                      "seed; mean ± sd); largest ratio over logged epochs > 0 and crossing of the "
                      "curves (per seed, and of the mean curves).", "",
                      "| dataset/arch | ratio init | ratio early | ratio end | max ratio (epoch) "
                      "| crossing per seed | crossing of mean curves | all crossings |",
                      "|---|---|---|---|---|---|---|---|"]
    for real, _ in comparisons([a for a, _ in runs]):
        key = real.rsplit("/", 1)[0]
        comp = out[key] = compare(by_group[real], by_group[key + "/random"])
        per_seed = "; ".join(_crossing_text(s, e) for s, e in zip(comp["crossing_sign"],
                                                                   comp["crossing_epoch"]))
        max_cells = ", ".join(f"{_fmt(r, '.2f')} ({_fmt(e, '.3g')})"
                              for r, e in zip(comp["max_ratio"], comp["epoch_of_max_ratio"]))
        mean_crossing = _crossing_text(comp["mean_curve_crossing_sign"],
                                       comp["mean_curve_crossing_epoch"])
        lines.append(f"| {key} | " + " | ".join(
            statistics.summarize(comp[f"ratio_{w}"]).text(".2f") for w in ("init", "early", "end"))
            + f" | {max_cells} | {per_seed} | {mean_crossing} | "
            + (", ".join(f"{e:.3g}" for e in comp["mean_curve_crossings"]) or "none") + " |")
    return lines + [""], {"m": ms.pop(), "comparisons": out}


def setting(runs):
    lines = []
    for dataset in dict.fromkeys(a.config.dataset for a, _ in runs):
        c = next(r["config"] for a, r in runs if a.config.dataset == dataset)
        lines += [f"{dataset}: SGD lr {c['learning_rate']}, momentum {c['momentum']}, batch "
                  f"{c['batch_size']}, {c['epochs']} epochs; random labels: 100 % "
                  f"({c['noise_kind']}); m = {c['coherence_samples']} fixed training examples "
                  f"(the arm's labels) and m fixed test examples (real labels), the same for "
                  f"every arm; early = epoch {c['early_epoch']:g}. MLP {c['depth']} × "
                  f"{c['width']}; CNN filters {tuple(c['cnn_filters'])} + dense "
                  f"{c['dense_width']}; ResNet stages {tuple(c['resnet_filters'])} × "
                  f"{c['resnet_blocks']} BN basic block(s).", ""]
    return lines


def figures(workdir, runs):
    from . import figures as fig

    keys = (("coherence/train/m_coherence", "m-coherence, train sample"),
            ("coherence/test/m_coherence", "m-coherence, test sample"),
            ("train_accuracy", "train acc. (fraction)"), ("test_accuracy", "test acc. (fraction)"))
    return [fig.curves_per_group(
        workdir, f"real_vs_random_arch_{dataset}.png",
        [(a, r) for a, r in runs if a.config.dataset == dataset], keys, x="epoch",
        x_label="epoch (log; 0 at 0.5)", log_x=10, row_of=lambda a: a.panel,
        title=f"{dataset}: real vs random labels per architecture")
        for dataset in dict.fromkeys(a.config.dataset for a, _ in runs)]


run = common.resumable(_train, check_config)

PROGRESS = ("train_coh_init", "train_coh_early", "train_coh_end", "test_accuracy")

EXPERIMENT = Experiment(
    name="real_vs_random_arch",
    title="Real vs random labels across architectures: m-coherence (arXiv 2008.01217)",
    arms=arms, run_arm=run, columns=COLUMNS, loop="graph", comparisons=comparisons,
    compared=("train_coh_init", "train_coh_early", "train_coh_end"), rules=rules,
    analyses=analyses, setting=setting, figures=figures, progress=PROGRESS)
