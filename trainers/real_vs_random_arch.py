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
(`trainers/beyond_common.py`). Batch order: epoch e is the permutation `default_rng([seed, e])`,
cut into `batch_size` chunks (the last one partial), so a run resumed mid-epoch sees the same
batches.

The experiment (`arms`, `report`): per dataset and architecture one real and one random arm per
seed; seed s of both arms starts from the same initial weights. `report` gives the m-coherence of
the training sample at init, at `early_epoch` and at the end, the ratio real / random (per seed,
then mean ± sd), the largest ratio over the logged epochs > 0, and when the curves cross
(`crossing`, on the mean curves and per seed).
"""

import math
import os
import time

import numpy as np

from trainers import beyond_common as common
from trainers import hparams_board

DEFAULT_SEEDS = 2
ARCH_NAMES = ("mlp", "cnn", "resnet")
DATASET_NAMES = ("mnist1d", "mnist5k")
ARM_NAMES = {0.0: "real", 1.0: "random"}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

def arm_name(label_noise):
    return ARM_NAMES.get(float(label_noise), f"noise{round(float(label_noise) * 100):03d}")


def log_steps(log_epochs, epochs, steps_per_epoch):
    """{update count: epoch} of the log points: each epoch of `log_epochs` up to `epochs`
    (later ones dropped, so `--set=epochs=N` needs no new list) rounded to the nearest update,
    plus the end of training; the epoch recorded is the true one, update / steps_per_epoch."""
    steps = {int(round(float(e) * steps_per_epoch)) for e in log_epochs if e <= epochs}
    steps.add(int(epochs) * steps_per_epoch)
    return {s: s / steps_per_epoch for s in sorted(steps)}


def _hparams(config):
    return {"dataset": config.dataset, "arch": config.arch, "labels": arm_name(config.label_noise),
            "label_noise": float(config.label_noise), "seed": int(config.seed),
            "learning_rate": float(config.learning_rate), "momentum": float(config.momentum),
            "batch_size": int(config.batch_size), "epochs": int(config.epochs),
            "coherence_samples": int(config.coherence_samples)}


def _train(config, run_dir, echo):
    """The training of one run (`run` below: finished runs and bad configs are handled there)."""
    config_dict = config.to_dict()
    import keras
    import tensorflow as tf

    from cgh_tf import coherence, data

    started = time.time()
    name = f"{config.dataset}/{config.arch}/{arm_name(config.label_noise)}/seed{config.seed}"
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
    optimizer = keras.optimizers.SGD(float(config.learning_rate), momentum=float(config.momentum))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction=None)
    n, batch = len(x), int(config.batch_size)
    steps_per_epoch = -(-n // batch)
    xt, yt = tf.constant(x), tf.constant(y)

    @tf.function(reduce_retracing=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def train_range(perm, first, last):  # batches [first, last) of one epoch, in one graph
        for k in tf.range(first, last):
            idx = perm[k * batch:(k + 1) * batch]
            train_step(tf.gather(xt, idx), tf.gather(yt, idx))

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

    def log(step, epoch, curves):
        train_loss, train_acc = loss_accuracy(x, y)
        test_loss, test_acc = loss_accuracy(x_test, y_test)
        row = {"step": step, "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
               "test_loss": test_loss, "test_accuracy": test_acc}
        for sample, (xs, ys) in samples.items():
            stats = coherence.measure(model, xs, ys, loss=loss_fn, per_layer=True, batch_size=m)
            if stats.m != m:
                raise RuntimeError(f"measured m={stats.m}, expected {m}")
            row.update(common.coherence_row(f"coherence/{sample}", stats))
        common.append(curves, row)
        echo(f"  {name} epoch {epoch:g} (update {step}): train acc {train_acc:.3f} test acc "
             f"{test_acc:.3f} m-coh. train {row['coherence/train/m_coherence']:.3f} test "
             f"{row['coherence/test/m_coherence']:.3f}")
        return row

    ckpt = common.Checkpointer(run_dir, model, optimizer)
    step, curves = ckpt.restore(config_dict)
    points = log_steps(config.log_epochs, int(config.epochs), steps_per_epoch)
    last = int(config.epochs) * steps_per_epoch
    if curves is None:
        step, curves = 0, {}
        if 0 in points:
            log(0, points[0], curves)
    else:
        echo(f"  {name}: resumed at update {step} (epoch {step / steps_per_epoch:g})")
    logged = 0
    while step < last:
        target = min(s for s in points if s > step)
        while step < target:
            epoch, first = divmod(step, steps_per_epoch)
            stop = min(steps_per_epoch, first + target - step)
            perm = np.random.default_rng([int(config.seed), epoch]).permutation(n)
            train_range(tf.constant(perm, tf.int32), tf.constant(first, tf.int32),
                        tf.constant(stop, tf.int32))
            step += stop - first
        log(step, points[step], curves)
        logged += 1
        if logged % int(config.checkpoint_every_logs) == 0 or step == last:
            ckpt.save(step, curves, config_dict)
    summary = run_summary(curves, float(config.early_epoch))
    summary["num_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    summary["m"] = m
    hparams_board.write_session(os.path.join(run_dir, "tensorboard"), _hparams(config),
                                summary, curves)
    return common.finish(run_dir, config_dict, curves, summary, started, num_train=n,
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


# ----------------------------------------------------------------------------------------------
# Comparing real and random
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------

def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need(config.dataset in DATASET_NAMES, f"dataset={config.dataset!r} is unknown for "
         f"real_vs_random_arch; allowed: {', '.join(DATASET_NAMES)}")
    need(config.arch in ARCH_NAMES, f"arch={config.arch!r} is unknown; allowed: "
         f"{', '.join(ARCH_NAMES)}")
    need(is_num(config.label_noise) and 0 <= config.label_noise <= 1,
         f"label_noise={config.label_noise!r} must be in [0, 1] (0 real, 1 random labels)")
    need(config.noise_kind in data.LABEL_NOISE_KINDS, f"noise_kind={config.noise_kind!r} is "
         f"unknown; allowed: {', '.join(data.LABEL_NOISE_KINDS)}")
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


def arms(scale="small", seeds=DEFAULT_SEEDS, overrides=None, archs=None):
    """[(group, label, seed, config)], group = "dataset/arch/real|random"; every config checked.

    Datasets: `DATASETS[scale]`, or only `overrides["dataset"]`; architectures: `ARCHS`, or only
    `overrides["arch"]`, or `archs`; config = base ← `SCALES[scale]` ←
    `DATASET_CHANGES[scale][dataset]` ← `overrides` ← the arm's label_noise and seed."""
    from configs import real_vs_random_arch as rr_config
    from trainers import config_schema

    if scale not in rr_config.SCALES:
        raise ValueError(f"scale={scale!r} is unknown for real_vs_random_arch; allowed: "
                         f"{', '.join(rr_config.SCALES)}")
    overrides = dict(overrides or {})
    for field in ("label_noise", "seed"):
        if field in overrides:
            raise ValueError(f"{field} is set by the arms (label_noise 0 real / 1 random; seed "
                             f"0..seeds-1) and cannot be overridden")
    datasets = (overrides["dataset"],) if "dataset" in overrides else rr_config.DATASETS[scale]
    archs = (overrides["arch"],) if "arch" in overrides else tuple(archs or rr_config.ARCHS)
    out = []
    for dataset in datasets:
        if dataset not in rr_config.DATASET_CHANGES[scale]:
            raise ValueError(f"dataset={dataset!r} is unknown for real_vs_random_arch; allowed: "
                             f"{', '.join(rr_config.DATASET_CHANGES[scale])}")
        base = common.scaled_config(rr_config, scale, dataset, overrides)
        for arch in archs:
            for noise in (0.0, 1.0):
                config = config_schema.apply_overrides(base, {"arch": arch, "label_noise": noise})
                check_config(config)
                for seed in range(seeds):
                    out.append((f"{dataset}/{arch}/{arm_name(noise)}",
                                f"{dataset}, {arch}, {arm_name(noise)} labels", seed,
                                config_schema.apply_overrides(config, {"seed": seed})))
    return out


TABLE = (  # (summary key, header, format) per arm
    ("train_coh_init", "m-coh. train, init", ".2f"),
    ("train_coh_early", "m-coh. train, early", ".2f"),
    ("train_coh_end", "m-coh. train, end", ".2f"),
    ("test_coh_end", "m-coh. test, end", ".2f"),
    ("train_accuracy", "train acc (vs training label)", ".3f"),
    ("test_accuracy", "test acc", ".3f"),
)


def _fmt(value, fmt):
    return "n/a" if value is None else format(value, fmt)


def _crossing_text(sign, epoch):
    if sign == 0:
        return "never differ"
    above = "real > random" if sign > 0 else "real < random"
    return f"{above}, cross at {epoch:.3g}" if epoch is not None else f"{above}, never cross"


def report(workdir, runs, command, seconds):
    groups = common.by_group(runs)
    ms = {r["summary"]["m"] for *_, r in runs}
    if len(ms) != 1:
        raise ValueError(f"the arms measured coherence on samples of different m: {sorted(ms)}")
    m = ms.pop()
    summary = {"experiment": "real_vs_random_arch", "command": command, "m": m, "groups": {},
               "comparisons": {}, "seconds": seconds}
    for group, results in groups.items():
        summary["groups"][group] = {
            key: dict(zip(("mean", "sd", "n"), common.mean_sd([r["summary"][key] for r in results])),
                      values=[r["summary"][key] for r in results])
            for key in results[0]["summary"]}
    pairs = {}
    for group in groups:
        dataset, arch, arm = group.split("/")
        pairs.setdefault((dataset, arch), {})[arm] = groups[group]
    for (dataset, arch), arm_runs in pairs.items():
        if "real" in arm_runs and "random" in arm_runs:
            summary["comparisons"][f"{dataset}/{arch}"] = compare(arm_runs["real"],
                                                                 arm_runs["random"])
    figures = plot(workdir, runs)
    summary["figures"] = figures
    hparams_board.write_experiment(workdir, [(_hparams(_config(r)), r["summary"])
                                             for *_, r in runs])
    common.write_json(os.path.join(workdir, "results.json"), summary)
    lines = ["# Real vs random labels across architectures: m-coherence (arXiv 2008.01217)", "",
             f"Command: `{command}`", ""]
    for dataset in dict.fromkeys(r["config"]["dataset"] for *_, r in runs):
        c = next(r["config"] for *_, r in runs if r["config"]["dataset"] == dataset)
        lines += [f"{dataset}: SGD lr {c['learning_rate']}, momentum {c['momentum']}, batch "
                  f"{c['batch_size']}, {c['epochs']} epochs; random labels: 100 % "
                  f"({c['noise_kind']}); m = {m} fixed training examples (the arm's labels) and m "
                  f"fixed test examples (real labels), the same for every arm; early = epoch "
                  f"{c['early_epoch']:g}. MLP {c['depth']} × {c['width']}; CNN filters "
                  f"{tuple(c['cnn_filters'])} + dense {c['dense_width']}; ResNet stages "
                  f"{tuple(c['resnet_filters'])} × {c['resnet_blocks']} BN basic block(s).", ""]
    lines += ["Mean ± sample sd over seeds. m-coherence of the fixed training sample with the "
              "arm's labels unless stated; test sample: real test labels.", "",
              "| run | " + " | ".join(h for _, h, _ in TABLE) + " |",
              "|---" * (len(TABLE) + 1) + "|"]
    for group, results in groups.items():
        lines.append(f"| {group} | " + " | ".join(
            common.cell([r["summary"][k] for r in results], fmt) for k, _, fmt in TABLE) + " |")
    lines += ["", "Real / random ratio of the training-sample m-coherence (per seed, paired by "
              "seed: same initial weights; then mean ± sd); largest ratio over logged epochs > 0 "
              "and crossing of the curves (per seed, and of the mean curves).", "",
              "| dataset/arch | ratio init | ratio early | ratio end | max ratio (epoch) | "
              "crossing per seed | crossing of mean curves | all crossings of mean curves |",
              "|---|---|---|---|---|---|---|---|"]
    for key, comp in summary["comparisons"].items():
        per_seed = "; ".join(_crossing_text(s, e) for s, e in zip(comp["crossing_sign"],
                                                                   comp["crossing_epoch"]))
        max_cells = ", ".join(f"{_fmt(r, '.2f')} ({_fmt(e, '.3g')})"
                              for r, e in zip(comp["max_ratio"], comp["epoch_of_max_ratio"]))
        lines.append(f"| {key} | {common.cell(comp['ratio_init'], '.2f')} | "
                     f"{common.cell(comp['ratio_early'], '.2f')} | "
                     f"{common.cell(comp['ratio_end'], '.2f')} | {max_cells} | {per_seed} | "
                     f"{_crossing_text(comp['mean_curve_crossing_sign'], comp['mean_curve_crossing_epoch'])} | "
                     + (", ".join(f"{e:.3g}" for e in comp["mean_curve_crossings"]) or "none")
                     + " |")
    common.write_results_md(workdir, lines, runs, figures, summary, per="arm")
    return summary


def _config(result):
    import ml_collections

    return ml_collections.ConfigDict(result["config"])


def _x(results):
    """Epochs for a log x axis: epoch 0 is drawn at half the first logged epoch > 0."""
    epochs = np.array(results[0]["curves"]["epoch"], dtype=float)
    positive = epochs[epochs > 0]
    return np.where(epochs > 0, epochs, positive.min() / 2 if positive.size else 1.0)


def plot(workdir, runs):
    plt = common.pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    def ticks(ax, y=True):
        ax.xaxis.set_major_locator(LogLocator(base=2, numticks=12))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if y:
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())

    groups = common.by_group(runs)
    figures = []
    colors = {"real": "tab:blue", "random": "tab:red"}
    for dataset in dict.fromkeys(g.split("/")[0] for g in groups):
        archs = list(dict.fromkeys(g.split("/")[1] for g in groups if g.startswith(dataset + "/")))
        fig, axes = plt.subplots(2, len(archs), figsize=(3.6 * len(archs), 5.6), squeeze=False)
        for j, arch in enumerate(archs):
            top, bottom = axes[0, j], axes[1, j]
            for arm in ("real", "random"):
                results = groups.get(f"{dataset}/{arch}/{arm}")
                if not results:
                    continue
                x = _x(results)
                mean, lo, hi = common.series(results, "coherence/train/m_coherence")
                top.plot(x, mean, "o-", ms=3, color=colors[arm], label=f"{arm}: train sample")
                top.fill_between(x, lo, hi, color=colors[arm], alpha=0.2)
                mean, _, _ = common.series(results, "coherence/test/m_coherence")
                top.plot(x, mean, "--", color=colors[arm], alpha=0.6,
                         label=f"{arm}: test sample (real labels)")
                mean, _, _ = common.series(results, "train_accuracy")
                bottom.plot(x, mean, "-", color=colors[arm], label=f"{arm}: train acc")
                mean, _, _ = common.series(results, "test_accuracy")
                bottom.plot(x, mean, "--", color=colors[arm], alpha=0.6,
                            label=f"{arm}: test acc")
            top.set_yscale("log")
            m = results[0]["summary"]["m"]
            top.set_title(f"{arch}: m-coherence (m={m})", fontsize=9)
            bottom.set_title(f"{arch}: accuracy", fontsize=9)
            for ax in (top, bottom):
                ax.set_xscale("log")
                ticks(ax, y=ax is top)
                ax.set_xlabel("epoch (0 drawn at the left end)", fontsize=8)
                ax.tick_params(labelsize=7)
            bottom.set_ylim(0, 1.02)
        axes[0, 0].legend(fontsize=6)
        axes[1, 0].legend(fontsize=6)
        fig.suptitle(f"Real vs random labels, {dataset} (mean over seeds; band: min-max of the "
                     f"train sample)", fontsize=10)
        fig.tight_layout()
        name = f"real_vs_random_arch_{dataset}.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)
        # per layer: one row per architecture, columns real / random
        fig, axes = plt.subplots(len(archs), 2, figsize=(9, 3.0 * len(archs)), squeeze=False)
        for i, arch in enumerate(archs):
            for j, arm in enumerate(("real", "random")):
                ax = axes[i, j]
                results = groups.get(f"{dataset}/{arch}/{arm}")
                if not results:
                    ax.set_visible(False)
                    continue
                x = _x(results)
                layers = results[0]["layers"]
                cmap = plt.get_cmap("viridis")
                for k, layer in enumerate(layers):
                    mean, _, _ = common.series(results, f"coherence/train/{layer}/m_coherence")
                    ax.plot(x, mean, color=cmap(k / max(1, len(layers) - 1)), lw=1, label=layer)
                mean, _, _ = common.series(results, "coherence/train/m_coherence")
                ax.plot(x, mean, "k--", lw=1.5, label="all layers")
                ax.set_xscale("log")
                ax.set_yscale("log")
                ticks(ax)
                ax.set_title(f"{arch}, {arm} labels: per-layer m-coherence, train sample",
                             fontsize=8)
                ax.tick_params(labelsize=7)
                ax.legend(fontsize=5, ncol=2 if len(layers) > 8 else 1)
        axes[-1, 0].set_xlabel("epoch (0 drawn at the left end)", fontsize=8)
        axes[-1, 1].set_xlabel("epoch (0 drawn at the left end)", fontsize=8)
        fig.tight_layout()
        name = f"real_vs_random_arch_{dataset}_per_layer.png"
        fig.savefig(os.path.join(workdir, name), dpi=80)
        plt.close(fig)
        figures.append(name)
    return figures


def _describe(s):
    """The progress line of a finished run (`common.run_plan`)."""
    return (f"m-coh. train init {_fmt(s['train_coh_init'], '.2f')} early "
            f"{_fmt(s['train_coh_early'], '.2f')} end {_fmt(s['train_coh_end'], '.2f')}; train acc "
            f"{s['train_accuracy']:.3f} test acc {s['test_accuracy']:.3f}")


def reproduce(workdir, scale="small", seeds=DEFAULT_SEEDS, overrides=None, command="",
              echo=print, archs=None):
    echo = echo or (lambda line: None)
    plan = arms(scale, seeds, overrides, archs)  # every config checked before anything is written
    runs, seconds = common.run_plan(workdir, plan, run, _describe, echo)
    return report(workdir, runs, command, seconds)


run = common.resumable(_train, check_config)
