"""The measurements a custom-loop experiment logs: each returns plain Python numbers for one
`log(position)` row of its curves. Accuracies are fractions in [0, 1]; losses are nats per
example.
"""

import math

import numpy as np


def loss_accuracy(model, loss_fn):
    """`evaluate(xs, ys)` -> (loss_fn(ys, logits), float32 accuracy) tensors, inference mode."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def evaluate(xs, ys):
        logits = model(xs, training=False)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ys), tf.float32)
        return loss_fn(ys, logits), tf.reduce_mean(correct)
    return evaluate


def streamed_loss_accuracy(model, chunk=1000):
    """`evaluate(xs, ys)` -> (mean cross-entropy, accuracy) as Python floats over NumPy arrays,
    `chunk` examples per compiled call (sums in float32 per chunk, accumulated in float64):
    memory bounded by the chunk whatever n is."""
    import keras
    import tensorflow as tf

    per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function(reduce_retracing=True)
    def sums(xs, ys):
        logits = model(xs, training=False)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ys)
        return tf.reduce_sum(per_example(ys, logits)), tf.reduce_sum(tf.cast(correct, tf.float32))

    def evaluate(xs, ys):
        loss, correct = 0.0, 0.0
        for start in range(0, len(xs), chunk):
            chunk_loss, chunk_correct = sums(tf.constant(xs[start:start + chunk]),
                                             tf.constant(ys[start:start + chunk]))
            loss, correct = loss + float(chunk_loss), correct + float(chunk_correct)
        return loss / len(xs), correct / len(xs)
    return evaluate


def split_metrics(evaluate, splits):
    """{<name>_loss, <name>_accuracy} of `evaluate(x, y)` -> (loss, accuracy) on each split of
    `splits` {name: (x, y)}, as Python floats."""
    row = {}
    for name, (xs, ys) in splits.items():
        loss, acc = evaluate(xs, ys)
        row[f"{name}_loss"], row[f"{name}_accuracy"] = float(loss), float(acc)
    return row


def accuracy(pred, labels, mask=None):
    """Fraction of pred == labels (NumPy [n]) over `mask` (bool [n], None: all); None if empty."""
    if mask is None:
        return float(np.mean(pred == labels))
    return float(np.mean(pred[mask] == labels[mask])) if mask.any() else None


def label_accuracies(pred, y, corrupted, original_y=None):
    """Train accuracy of `pred` on the pristine and on the corrupted examples (bool mask
    `corrupted` [n]) against the training labels y (memorisation), and with `original_y` also the
    corrupted ones against their true labels."""
    row = {"pristine_accuracy": accuracy(pred, y, ~corrupted),
           "corrupted_accuracy": accuracy(pred, y, corrupted)}
    if original_y is not None:
        row["corrupted_true_accuracy"] = accuracy(pred, original_y, corrupted)
    return row


def label_pair_density(original_y, y, corrupted, num_classes):
    """How coherent the corrupted set can be (issue 24): its examples per (true, noisy) label
    pair, {corrupted_per_label_pair: mean over the K(K − 1) pairs, label_pair_min: the fewest in
    any pair}; original_y, y int [n], corrupted bool [n]."""
    k = int(num_classes)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (original_y[corrupted], y[corrupted]), 1)
    off_diagonal = counts[~np.eye(k, dtype=bool)]
    return {"corrupted_per_label_pair": float(off_diagonal.mean()),
            "label_pair_min": int(off_diagonal.min())}


def fraction_pristine(model, x, y, pristine, loss_fn):
    """f^p = ⟨g, g^p⟩ / ⟨g, g⟩ of the sample (x, y) whose pristine examples are the bool mask
    `pristine` (`cgh_tf.coherence.loss_reduction_fractions`, one batch, inference mode)."""
    from cgh_tf import coherence

    f_pristine, _ = coherence.loss_reduction_fractions(model, x, y, pristine, loss=loss_fn,
                                                       batch_size=len(x))
    return f_pristine


def sample_coherence(model, samples, loss_fn, pairwise=False, batch_size=None):
    """{coherence/<name>/m_coherence, .../alpha, per layer} of the exact per-example coherence
    (`cgh_tf.coherence.measure`, inference mode) of each fixed sample `{name: (x, y)}`, streamed
    in batches of min(`batch_size`, m) examples (None: the whole sample as one batch); with
    `pairwise` also (r − 1)/(m − 1) (`coherence_row`)."""
    from cgh_tf import coherence

    row = {}
    for name, (xs, ys) in samples.items():
        stats = coherence.measure(model, xs, ys, loss=loss_fn, per_layer=True,
                                  batch_size=min(batch_size or len(xs), len(xs)))
        row.update(coherence_row(f"coherence/{name}", stats, pairwise))
    return row


def coherence_row(prefix, stats, pairwise=False):
    """{prefix/m_coherence, prefix/alpha, prefix/<layer>/m_coherence, ...} of a CoherenceStats;
    with `pairwise` also prefix/pairwise and prefix/<layer>/pairwise = (r − 1)/(m − 1), the mean
    alignment of two different examples' gradients (comparable across m)."""
    row = {}
    for key, layer_stats in [(prefix, stats)] + [(f"{prefix}/{layer}", s)
                                                 for layer, s in stats.per_layer.items()]:
        row[f"{key}/m_coherence"] = layer_stats.m_coherence
        row[f"{key}/alpha"] = layer_stats.alpha
        if pairwise:
            row[f"{key}/pairwise"] = layer_stats.pairwise_coherence
    return row


def layer_names(curves, prefix):
    """Layer names of the per-layer curves `<prefix>/<layer>/m_coherence`, in logging order."""
    head, tail = prefix + "/", "/m_coherence"
    return [k[len(head):-len(tail)] for k in curves
            if k.startswith(head) and k.endswith(tail) and k != head + tail[1:]]


def weight_norm(model):
    """‖w‖: the L2 norm of all trainable weights, summed in float64."""
    return float(math.sqrt(sum(float(np.sum(np.square(v.numpy().astype(np.float64))))
                               for v in model.trainable_variables)))
