r"""Early stopping with label noise: does the coherence of training gradients say when to stop?

Claim (Coherent Gradients, arXiv 2002.10657 §6 and 2003.07422): pristine examples' gradients are
coherent and are fitted first; corrupted examples are memorised later, so stopping before
memorisation generalises better. This experiment tracks that turn and compares stopping rules.

One run (`run(config, run_dir)`): an MLP (`depth` hidden layers of `width` ReLU units; images are
flattened) trained with Adam (or plain SGD) on `cgh_tf.data.load(dataset, label_noise=...)`, with
`validation_fraction` of the *noisy* training set held out (its labels carry the same noise as the
training labels: that is what a practitioner has). At every log point (step 0, then
`early_logs_per_epoch` per epoch for `early_epochs` epochs, then every epoch up to `epochs`):

| curve key                          | what                                                      |
|------------------------------------|-----------------------------------------------------------|
| `test_accuracy`                    | clean test labels                                         |
| `validation_accuracy`              | held-out split vs its noisy labels (rule b)               |
| `validation_clean_accuracy`        | the same split vs its original labels (diagnostic only)   |
| `pristine_accuracy`                | training part, pristine examples (vs their labels)        |
| `corrupted_accuracy`               | training part, corrupted examples vs the *noisy* labels   |
| `train_accuracy`, `train_loss`     | whole training part vs its (noisy) training labels        |
| `coherence/train/...`              | m-coherence, α (per layer) of a fixed mixed sample of m   |
|                                    | training examples with their training labels (rule c)     |
| `coherence/pristine/...`           | the same for m pristine training examples                 |
| `coherence/corrupted/...`          | the same for m corrupted examples (their noisy labels)    |
| `f_pristine`                       | f^p = ⟨g, g^p⟩ / ⟨g, g⟩ on the mixed training sample       |

Stopping rules (`RULES`; fixed before any test result was seen; each picks one log point, scored by
the test accuracy there): `final` (a), `validation` (b: first best noisy-validation accuracy),
`coherence_drop` (c1: first point where the training sample's m-coherence r_t ≤ `coherence_drop` ·
max_{s≤t} r_s; uses training inputs and training labels only; if it never fires it picks the last
point and `coherence_drop_fired` = 0), `coherence_plateau` (c2: first point where r_t ≤ min r +
`plateau_fraction` · (max r − min r) over the whole run; retrospective, training data only), and
`oracle` (best test accuracy: an upper bound no rule can beat). Memorisation onset
(`memorisation_onset`): the first log point after the (first) minimum of the corrupted train
accuracy at which it is ≥ that minimum + `onset_rise` (uses the corrupted mask: diagnostic only).

Resumable from a checkpoint written every `checkpoint_every_logs` log points (`graph_loop.run_logged`
in steps). Batch order: global step s trains on batch s mod S of the permutation
`default_rng([seed, s // S])` of the training part (S = steps per epoch; `graph_loop.epoch_trainer`).
Declared: within each noise level, each rule's test accuracy against the others', paired by seed
(`CONTRASTS`), and two verdict rules (`rules`).

Default dataset: mnist5k (real 28×28 digits): this MLP fits its pristine examples to ~0.9 test
accuracy within a few epochs and memorises the corrupted ones over the following tens of epochs,
so test accuracy rises and falls by 7-18 points (25 / 50 % noise). On MNIST-1D the same MLP
reaches < 0.5 test accuracy and fits pristine and corrupted examples over overlapping periods: the
turn is smaller (6-9 points) and slower (`--set=dataset=mnist1d`, 100 epochs).
"""

import math
import time

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import graph_loop
from .experiment import Arm, Column, Experiment

DATASETS = ("mnist5k", "mnist1d", "digits")  # embedded datasets (no download)
OPTIMIZERS = ("adam", "sgd")
RULES = ("final", "validation", "coherence_drop", "coherence_plateau", "oracle")
RULE_NAMES = {"final": "(a) train to the end",
              "validation": "(b) best noisy-validation accuracy",
              "coherence_drop": "(c1) train-sample m-coherence ≤ drop × running max",
              "coherence_plateau": "(c2) train-sample m-coherence reaches its minimum plateau",
              "oracle": "oracle: best test accuracy (upper bound)"}
TRAIN_SAMPLE_KEY = "coherence/train/m_coherence"


# ----------------------------------------------------------------------------------------------
# Stopping rules and memorisation onset (pure functions of the logged curves)
# ----------------------------------------------------------------------------------------------

def _clean(values):
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
            for v in values]


def first_best(values):
    """Index of the first maximum (None values skipped); None if there is no value."""
    vals, best = _clean(values), None
    for i, v in enumerate(vals):
        if v is not None and (best is None or v > vals[best]):
            best = i
    return best


def coherence_drop_index(values, drop):
    """First index t with values[t] <= drop · max(values[:t+1]) (None values skipped; a running
    maximum <= 0 never fires); None if it never happens."""
    running = None
    for i, v in enumerate(_clean(values)):
        if v is None:
            continue
        running = v if running is None else max(running, v)
        if running > 0 and v <= drop * running:
            return i
    return None


def plateau_index(values, fraction):
    """First index t with values[t] <= min + fraction · (max − min) over all values; None if no
    value."""
    vals = _clean(values)
    present = [v for v in vals if v is not None]
    if not present:
        return None
    lo, hi = min(present), max(present)
    threshold = lo + fraction * (hi - lo)
    return next(i for i, v in enumerate(vals) if v is not None and v <= threshold)


def onset_index(values, rise):
    """Memorisation onset: first index after the first minimum of `values` (corrupted train
    accuracy) at which the value is >= minimum + rise; None if it never rises that much."""
    vals = _clean(values)
    present = [(v, i) for i, v in enumerate(vals) if v is not None]
    if not present:
        return None
    low, at = min(present)  # ties: the first index
    return next((i for i in range(at + 1, len(vals))
                 if vals[i] is not None and vals[i] >= low + rise), None)


def stopping_summary(curves, drop, plateau, rise):
    """The summary numbers of the rules: for each rule its log index, epoch, step, test accuracy
    and corrupted train accuracy at the pick; the memorisation onset; the gaps in epochs."""
    n = len(curves["step"])
    coh = curves[TRAIN_SAMPLE_KEY]
    drop_at = coherence_drop_index(coh, drop)
    picks = {"final": n - 1, "validation": first_best(curves["validation_accuracy"]),
             "coherence_drop": n - 1 if drop_at is None else drop_at,
             "coherence_plateau": plateau_index(coh, plateau),
             "oracle": first_best(curves["test_accuracy"])}
    out = {"coherence_drop_fired": 0 if drop_at is None else 1}
    for rule, i in picks.items():
        for key, name in (("test_accuracy", "test_accuracy"), ("epoch", "epoch"),
                          ("corrupted_accuracy", "corrupted_accuracy"),
                          ("pristine_accuracy", "pristine_accuracy")):
            out[f"{name}/{rule}"] = None if i is None else curves[key][i]
    onset = onset_index(curves["corrupted_accuracy"], rise)
    out["epoch/memorisation_onset"] = None if onset is None else curves["epoch"][onset]
    for rule in ("coherence_drop", "coherence_plateau", "validation", "oracle"):
        e = out[f"epoch/{rule}"]
        out[f"gap/{rule}_minus_onset"] = (None if e is None or onset is None
                                          else e - curves["epoch"][onset])
    peak = first_best(coh)
    out["max_m_coherence"] = None if peak is None else coh[peak]
    out["epoch/max_m_coherence"] = None if peak is None else curves["epoch"][peak]
    return out


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

build_model = common.mlp


def log_steps(config, steps_per_epoch):
    """Sorted global steps to log at: 0, `early_logs_per_epoch` per epoch (rounded to steps) for
    the first `early_epochs` epochs, then every epoch up to `epochs`."""
    epochs, early = int(config.epochs), min(int(config.early_epochs), int(config.epochs))
    per = int(config.early_logs_per_epoch)
    steps = {round(k * steps_per_epoch / per) for k in range(early * per + 1)}
    steps |= {e * steps_per_epoch for e in range(early, epochs + 1)}
    return sorted(steps)


def split_indices(n, validation_fraction, data_seed):
    """(train, validation) index arrays of a fixed random split of n examples."""
    perm = np.random.default_rng([int(data_seed), 4]).permutation(n)
    n_val = int(round(n * float(validation_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _train(config, run_dir, echo):
    """One run (finished runs and bad configs are handled by `common.resumable`)."""
    import keras
    import tensorflow as tf

    from cgh_tf import coherence, data, optimizers

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=int(config.data_seed),
                   max_train=config.max_train, max_test=config.max_test)
    x_all, y_all = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    train_idx, val_idx = split_indices(len(x_all), config.validation_fraction, config.data_seed)
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise ValueError(f"validation_fraction={config.validation_fraction!r} leaves "
                         f"{len(train_idx)} training / {len(val_idx)} validation examples")
    x, y, corrupted = x_all[train_idx], y_all[train_idx], ds.train.corrupted[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    y_val_clean = ds.train.original_y[val_idx].astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    if corrupted.sum() == 0 or corrupted.all():
        raise ValueError(f"label_noise={config.label_noise!r} leaves no corrupted or no pristine "
                         "training example")
    model = common.mlp(config, ds.input_shape, ds.num_classes)
    optimizer = optimizers.build(config.optimizer, float(config.learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    m = int(config.coherence_samples)
    all_idx = np.arange(len(x))
    samples = {"train": common.sample(all_idx, m, config.data_seed, 1),
               "pristine": common.sample(all_idx[~corrupted], m, config.data_seed, 2),
               "corrupted": common.sample(all_idx[corrupted], m, config.data_seed, 3)}
    mixed = samples["train"]
    n = len(x)
    xt, yt = tf.constant(x), tf.constant(y)
    train = graph_loop.epoch_trainer(model, optimizer, loss_fn, xt, yt, int(config.batch_size))
    steps_per_epoch = train.batches_per_epoch
    schedule = log_steps(config, steps_per_epoch)

    @tf.function(reduce_retracing=True)
    def predict(xs):
        return tf.argmax(model(xs, training=False), -1, output_type=tf.int32)

    x_eval = tf.constant(np.concatenate([x, x_val, x_test]))  # one prediction call per log

    def log(step):
        pred, pred_val, pred_test = np.split(predict(x_eval).numpy(), [n, n + len(x_val)])
        row = {"step": step, "epoch": step / steps_per_epoch,
               "train_loss": float(loss_fn(yt, model(xt, training=False))),
               "train_accuracy": float(np.mean(pred == y)),
               "test_accuracy": float(np.mean(pred_test == y_test)),
               "validation_accuracy": float(np.mean(pred_val == y_val)),
               "validation_clean_accuracy": float(np.mean(pred_val == y_val_clean)),
               "pristine_accuracy": float(np.mean(pred[~corrupted] == y[~corrupted])),
               "corrupted_accuracy": float(np.mean(pred[corrupted] == y[corrupted]))}
        row.update(common.sample_coherence(
            model, {name: (x[idx], y[idx]) for name, idx in samples.items()}, loss_fn))
        row["f_pristine"], _ = coherence.loss_reduction_fractions(
            model, x[mixed], y[mixed], ~corrupted[mixed], loss=loss_fn, batch_size=len(mixed))
        if echo:
            echo(f"  {run_dir} epoch {row['epoch']:.2f}: test {row['test_accuracy']:.3f} val "
                 f"{row['validation_accuracy']:.3f} corrupted {row['corrupted_accuracy']:.3f} "
                 f"m-coh. train {row[TRAIN_SAMPLE_KEY]:.2f} f^p {row['f_pristine']:.3f}")
        return row

    curves = graph_loop.run_logged(
        run_dir, config.to_dict(), model, optimizer,
        graph_loop.step_advancer(train, config.seed, n), log, total=schedule[-1],
        log_points=schedule, checkpoint_points=schedule[::int(config.checkpoint_every_logs)],
        echo=echo, unit="step")
    summary = stopping_summary(curves, float(config.coherence_drop),
                               float(config.plateau_fraction), float(config.onset_rise))
    for key in ("test_accuracy", "pristine_accuracy", "corrupted_accuracy", "train_loss",
                TRAIN_SAMPLE_KEY, "coherence/pristine/alpha", "coherence/corrupted/alpha",
                "f_pristine"):
        summary[f"last/{key}"] = curves[key][-1]
    return common.finish(run_dir, config.to_dict(), curves, summary, started, num_train=n,
                         num_validation=int(len(val_idx)), num_corrupted=int(corrupted.sum()),
                         num_validation_corrupted=int(ds.train.corrupted[val_idx].sum()),
                         steps_per_epoch=steps_per_epoch)


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    common.require_one_of(config, "dataset", DATASETS)
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    need(isinstance(config.noise_levels, (tuple, list)) and len(config.noise_levels) >= 1
         and all(number(p) and 0 < p < 1 for p in config.noise_levels),
         f"noise_levels={config.noise_levels!r} must be a non-empty tuple of numbers in (0, 1)")
    need(number(config.label_noise) and 0 < config.label_noise < 1,
         f"label_noise={config.label_noise!r} must be in (0, 1): the experiment compares "
         "pristine and corrupted examples")
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    need(number(config.learning_rate) and config.learning_rate > 0,
         f"learning_rate={config.learning_rate!r} must be a number > 0")
    need(number(config.validation_fraction) and 0 < config.validation_fraction < 1,
         f"validation_fraction={config.validation_fraction!r} must be in (0, 1)")
    for field in ("width", "depth", "batch_size", "epochs", "early_logs_per_epoch",
                  "coherence_samples", "checkpoint_every_logs"):
        need(config_schema.is_int(config[field], 1),
             f"{field}={config[field]!r} must be an int >= 1")
    need(isinstance(config.early_epochs, int) and config.early_epochs >= 0,
         f"early_epochs={config.early_epochs!r} must be an int >= 0")
    for field in ("max_train", "max_test"):
        need(config[field] is None or (isinstance(config[field], int) and config[field] >= 2),
             f"{field}={config[field]!r} must be None (all) or an int >= 2")
    for field in ("coherence_drop", "plateau_fraction", "onset_rise"):
        need(number(config[field]) and 0 < config[field] < 1,
             f"{field}={config[field]!r} must be a number in (0, 1)")
    for field in ("seed", "data_seed"):
        need(isinstance(config[field], int) and config[field] >= 0,
             f"{field}={config[field]!r} must be an int >= 0")


def arms(scale="small", seeds=3, overrides=None):
    """One arm per dataset and noise level; every config checked.

    Datasets: `DATASETS[scale]` of the config module, or only `overrides["dataset"]`; noise levels:
    `noise_levels`; config = base ← `SCALES[scale]` ← `DATASET_CHANGES[scale][dataset]` ←
    `overrides`."""
    from configs import early_stopping as es_config

    overrides = dict(overrides or {})
    if "label_noise" in overrides:
        raise ValueError(f"label_noise={overrides['label_noise']!r} is set per run from "
                         "noise_levels; set noise_levels=(p,) instead")
    out = []
    for dataset, base in common.dataset_bases(es_config, scale, overrides, "early_stopping"):
        check_config(base)
        for noise in base.noise_levels:
            config = config_schema.apply_overrides(base, {"label_noise": float(noise)})
            check_config(config)
            out += [Arm(f"{dataset}/noise{round(noise * 100):02d}", f"{noise:.0%} noise",
                        dataset, seed, config_schema.apply_overrides(config, {"seed": seed}))
                    for seed in range(seeds)]
    return out


def _values(results, key):
    return [r["summary"].get(key) for r in results]


def _mean(results, key):
    return statistics.summarize(_values(results, key)).mean


def _verdict(results):
    """Computed sentences: does rule c1 find the memorisation onset, and how do the rules score.

    The gap of c1 is averaged over the seeds where it fired (a rule that never fired told
    nothing); "yes" needs it to fire in every seed within max(1 epoch, 25 % of that seed's onset
    epoch) of the onset."""
    n = len(results)
    fired = [r for r in results if r["summary"]["coherence_drop_fired"] == 1]
    onset = _mean(results, "epoch/memorisation_onset")
    gap = _mean(fired, "gap/coherence_drop_minus_onset") if fired else None
    acc = {rule: _mean(results, f"test_accuracy/{rule}") for rule in RULES}
    found = sum(v is not None for v in _values(results, "epoch/memorisation_onset"))
    parts = [f"Memorisation onset found in {found}/{n} seeds (mean epoch "
             f"{'n/a' if onset is None else format(onset, '.2f')}); rule c1 fired in "
             f"{len(fired)}/{n} seeds."]
    if gap is None:
        parts.append("No c1 gap to compare: **no**.")
    else:
        pairs = [(r["summary"]["gap/coherence_drop_minus_onset"],
                  r["summary"]["epoch/memorisation_onset"]) for r in fired]
        close = len(fired) == n and all(
            g is not None and abs(g) <= max(1.0, 0.25 * o) for g, o in pairs)
        parts.append(f"Where it fired it picked on average {abs(gap):.2f} epochs "
                     f"{'after' if gap > 0 else 'before'} the onset. Within max(1 epoch, 25 % of "
                     f"the onset epoch) of the onset in every seed: **{'yes' if close else 'no'}**.")
    ranked = sorted((rule for rule in RULES if rule != "oracle" and acc[rule] is not None),
                    key=lambda r: -acc[r])
    if ranked:
        parts.append("Mean test accuracy at the pick: " + ", ".join(
            f"{rule} {acc[rule]:.3f}" for rule in ranked)
            + (f" (oracle {acc['oracle']:.3f})." if acc["oracle"] is not None else "."))
    return " ".join(parts)


COLUMNS = tuple(Column(f"test_accuracy/{rule}", f"test acc at pick: {rule}")
                for rule in RULES) + (
    Column("epoch/memorisation_onset", "memorisation onset (epoch)", ".2f"),
    Column("epoch/coherence_drop", "c1 pick (epoch)", ".2f"),
    Column("gap/coherence_drop_minus_onset", "c1 − onset (epochs)", ".2f"),
    Column("epoch/validation", "b pick (epoch)", ".2f"),
    Column("coherence_drop_fired", "c1 fired (share of seeds)", ".2f"),
)
# within each arm, paired by seed: each rule's test accuracy at its pick against the others'
CONTRASTS = (("test_accuracy/validation", "test_accuracy/final"),
             ("test_accuracy/coherence_drop", "test_accuracy/final"),
             ("test_accuracy/coherence_drop", "test_accuracy/validation"),
             ("test_accuracy/coherence_plateau", "test_accuracy/validation"))


def rules(arms_):
    """Per noise level: stopping early is worth something (b vs a, predicted higher); coherence
    is a stopping signal at least as good as a noisy validation split (c1 vs b)."""
    out = []
    for group in dict.fromkeys(a.group for a in arms_):
        out += [statistics.PairedRule(f"{group}: validation stopping beats training to the end",
                                      "test_accuracy/validation", group, group, "higher",
                                      control_metric="test_accuracy/final"),
                statistics.PairedRule(f"{group}: coherence stopping (c1) vs validation stopping",
                                      "test_accuracy/coherence_drop", group, group,
                                      control_metric="test_accuracy/validation")]
    return out


def analyses(runs):
    """Per noise level: does rule c1 find the memorisation onset (`_verdict`)."""
    by_group = {}
    for a, r in runs:
        by_group.setdefault(a.group, []).append(r)
    lines = ["Does the training-sample coherence tell when memorisation begins?", ""]
    verdicts = {g: _verdict(results) for g, results in by_group.items()}
    return lines + [f"- {g}: {v}" for g, v in verdicts.items()] + [""], {"onset": verdicts}


def setting(runs):
    r0 = runs[0][1]
    c = r0["config"]
    return [f"{c['dataset']}: MLP {c['depth']} × {c['width']} ReLU, {c['optimizer']} lr "
            f"{c['learning_rate']}, batch {c['batch_size']}, {c['epochs']} epochs "
            f"({r0['steps_per_epoch']} steps each), label noise {c['noise_kind']!r} at "
            f"{', '.join(f'{p:.0%}' for p in c['noise_levels'])}; {r0['num_train']} training / "
            f"{r0['num_validation']} validation examples (held out of the noisy training set: "
            f"same noise); m = {c['coherence_samples']}. Rules (fixed before any test result was "
            "seen): " + "; ".join(f"**{rule}** = {RULE_NAMES[rule]}" for rule in RULES)
            + f". c1: drop = {c['coherence_drop']}; c2: plateau = min + "
            f"{c['plateau_fraction']} × (max − min); onset: rise {c['onset_rise']} above the "
            "minimum of the corrupted train accuracy (uses the corrupted mask).", ""]


def figures(workdir, runs):
    from . import figures as fig

    keys = (("test_accuracy", "test acc. (fraction)"),
            ("validation_accuracy", "noisy-validation acc. (fraction)"),
            ("corrupted_accuracy", "corrupted train acc. (noisy label)"),
            ("pristine_accuracy", "pristine train acc. (fraction)"),
            ("coherence/train/m_coherence", "m-coherence, mixed train sample"),
            ("f_pristine", "f^p (fraction)"))
    return [fig.curves_per_group(
        workdir, f"early_stopping_{dataset}.png",
        [(a, r) for a, r in runs if a.config.dataset == dataset], keys, x="epoch",
        x_label="epoch", title=f"Early stopping, {dataset}", row_of=lambda a: a.group)
        for dataset in dict.fromkeys(a.config.dataset for a, _ in runs)]


run = common.resumable(_train, check_config)

PROGRESS = ("test_accuracy/final", "test_accuracy/validation", "test_accuracy/coherence_drop",
            "epoch/memorisation_onset")

EXPERIMENT = Experiment(
    name="early_stopping",
    title="Early stopping under label noise: test accuracy of stopping rules, and coherence",
    arms=arms, run_arm=run, columns=COLUMNS, loop="graph", contrasts=CONTRASTS, rules=rules,
    analyses=analyses, setting=setting, figures=figures, progress=PROGRESS)
