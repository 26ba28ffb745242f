"""The measurements of a custom-loop run's `log(position)` row, as Python numbers: accuracies
are fractions in [0, 1], losses nats per example."""

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
    """`evaluate(xs, ys)` -> (mean cross-entropy, accuracy) floats over NumPy arrays, `chunk`
    examples per call (float32 sums per chunk accumulated in float64)."""
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
    """{<name>_loss, <name>_accuracy} of `evaluate(x, y)` on each split {name: (x, y)}."""
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
    """Accuracy of `pred` on the pristine and corrupted examples (`corrupted` bool [n]) against
    the training labels y, and with `original_y` the corrupted ones against their true labels."""
    row = {"pristine_accuracy": accuracy(pred, y, ~corrupted),
           "corrupted_accuracy": accuracy(pred, y, corrupted)}
    if original_y is not None:
        row["corrupted_true_accuracy"] = accuracy(pred, original_y, corrupted)
    return row


def label_pair_density(original_y, y, corrupted, num_classes):
    """Corrupted examples per (true, noisy) label pair (issue 24): the mean over the K(K − 1)
    pairs and the fewest; original_y, y int [n], corrupted bool [n]."""
    k = int(num_classes)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (original_y[corrupted], y[corrupted]), 1)
    off_diagonal = counts[~np.eye(k, dtype=bool)]
    return {"corrupted_per_label_pair": float(off_diagonal.mean()),
            "label_pair_min": int(off_diagonal.min())}


def fraction_pristine(model, x, y, pristine, loss_fn):
    """f^p = ⟨g, g^p⟩ / ⟨g, g⟩ of the sample (x, y) with pristine mask `pristine` (one batch)."""
    from cgh_tf import coherence

    f_pristine, _ = coherence.loss_reduction_fractions(model, x, y, pristine, loss=loss_fn,
                                                       batch_size=len(x))
    return f_pristine


def sample_coherence(model, samples, loss_fn, pairwise=False, batch_size=None):
    """`coherence_row`s of the exact coherence (`cgh_tf.coherence.measure`, inference mode) of
    each sample {name: (x, y)}, in batches of min(`batch_size` or m, m) examples."""
    from cgh_tf import coherence

    row = {}
    for name, (xs, ys) in samples.items():
        stats = coherence.measure(model, xs, ys, loss=loss_fn, per_layer=True,
                                  batch_size=min(batch_size or len(xs), len(xs)))
        row.update(coherence_row(f"coherence/{name}", stats, pairwise))
    return row


def coherence_row(prefix, stats, pairwise=False):
    """{prefix[/<layer>]/m_coherence, .../alpha} of a CoherenceStats, with `pairwise` also
    .../pairwise = (r − 1)/(m − 1) (comparable across m)."""
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
