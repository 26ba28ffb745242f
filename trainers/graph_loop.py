"""The one custom training loop: graph-mode epochs over index tensors, logged, checkpointed, resumable.

For experiments that need update-level control (`optimizer.apply` on batches the experiment
chooses) instead of Keras `fit`. Epoch e of a run with seed s visits the permutation
`default_rng([s, e])` of the n training examples in `ceil(n / B)` batches (the last one partial),
all inside one `tf.function` call, so a resumed run replays exactly the batches of an
uninterrupted one.

| function                              | what                                                    |
|---------------------------------------|---------------------------------------------------------|
| `epoch_permutation(seed, epoch, n)`   | int64 [n]: the order of epoch `epoch`                    |
| `epoch_trainer(...)`                  | `train_epoch(perm)`: one epoch of `optimizer.apply` steps |
| `run_logged_epochs(...)`              | restore → log 0 → train / log / checkpoint → curves     |
"""

import numpy as np

from . import beyond_common as common


def epoch_permutation(seed, epoch, n):
    """The example order of epoch `epoch` (int64 [n]), a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


def epoch_trainer(model, optimizer, loss_fn, x, y, batch_size, per_update=1, aggregator=None,
                  drop_remainder=False):
    """`train_epoch(perm)`: one epoch over the training tensors x [n, ...], y [n] in the order of
    perm (int [n]), as one `tf.function` call.

    drop_remainder False: ceil(n / B) batches (the last one partial), each one `optimizer.apply`
    of the mean-loss gradient. drop_remainder True (update-level control): ⌊n / U⌋ updates
    of U = B × per_update examples, each `per_update` `optimizer.apply` calls on consecutive
    batches of B (an M3 wrapper updates on every per_update-th), with the batch gradient
    aggregated by `aggregator` (e.g. `cgh_tf.aggregators.Winsorize`) over per-example gradients
    when given; static batch shapes, the examples after the last whole update skipped. Returns
    `(train_epoch, optimizer updates per epoch)`.
    """
    import tensorflow as tf

    n, batch = int(x.shape[0]), int(batch_size)
    variables = model.trainable_variables
    if not drop_remainder:
        if per_update != 1 or aggregator is not None:
            raise ValueError("per_update > 1 or an aggregator needs drop_remainder=True (whole "
                             "updates of static-shape batches)")
        num_batches = -(-n // batch)

        @tf.function(reduce_retracing=True)
        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        @tf.function
        def train_epoch(perm):  # one call per epoch: the batch loop runs inside the graph
            for k in tf.range(num_batches):
                idx = perm[k * batch:(k + 1) * batch]
                train_step(tf.gather(x, idx), tf.gather(y, idx))

        return (lambda perm: train_epoch(tf.constant(perm))), num_batches
    return _update_epoch_trainer(model, optimizer, loss_fn, x, y, batch, per_update, aggregator)


def _update_epoch_trainer(model, optimizer, loss_fn, x, y, batch, per_update, aggregator):
    import tensorflow as tf

    from cgh_tf import per_example

    n, variables = int(x.shape[0]), model.trainable_variables
    per = batch * per_update
    updates = n // per

    def gradients(xb, yb):
        if aggregator is not None:
            return per_example.reduced_per_example_gradients(
                model, xb, yb, aggregator.reduce, loss_fn=loss_fn, training=True,
                reduce_outer=aggregator.reduce_outer)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        return tape.gradient(loss, variables)

    @tf.function(input_signature=[tf.TensorSpec([n], tf.int32)])
    def train_epoch(perm):
        for k in tf.range(updates):
            for g in range(per_update):
                idx = tf.reshape(perm[k * per + g * batch:k * per + (g + 1) * batch], [batch])
                optimizer.apply(gradients(tf.gather(x, idx), tf.gather(y, idx)), variables)

    return (lambda perm: train_epoch(tf.constant(perm.astype(np.int32)))), updates


def run_logged_epochs(run_dir, config_dict, model, optimizer, train_epoch, log, *, epochs,
                      log_epochs, checkpoint_every, seed, n, echo=None):
    """Train epochs 0..epochs−1 with `train_epoch(perm)`, logging after the epochs in `log_epochs`
    (sorted; 0 = before training) and checkpointing (model, optimizer, epoch, curves) at every
    `checkpoint_every`-th log and the last; resumes from the newest checkpoint of this config
    (and says so on `echo`).

    log(epoch) -> dict of scalars, appended to the curves. Returns the curves {key: [values]}.
    """
    ckpt = common.Checkpointer(run_dir, model, optimizer)
    epoch, curves = ckpt.restore(config_dict)
    if curves is None:
        epoch, curves = 0, {}
        if 0 in log_epochs:
            common.append(curves, log(0))
    elif echo:
        echo(f"  resumed {run_dir} at epoch {epoch}")
    while epoch < int(epochs):
        train_epoch(epoch_permutation(seed, epoch, n))
        epoch += 1
        if epoch in log_epochs:
            common.append(curves, log(epoch))
            if log_epochs.index(epoch) % int(checkpoint_every) == 0 or epoch == int(epochs):
                ckpt.save(epoch, curves, config_dict)
    return curves


def capped_log_epochs(log_epochs, epochs):
    """Sorted epochs to log at: `log_epochs` up to `epochs` (later ones dropped, so that
    `--set=epochs=N` needs no new list) plus `epochs` itself."""
    return sorted({int(e) for e in log_epochs if e <= int(epochs)} | {int(epochs)})


def predictor(model, chunk=16384):
    """`predict(xs, ys)` -> (argmax int32 [n], per-example cross-entropy float32 [n]) of the
    logits model in inference mode, over NumPy arrays in chunks of `chunk` examples."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def logits_stats(xs, ys):
        logits = model(xs, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits)
        return tf.argmax(logits, -1, output_type=tf.int32), losses

    def predict(xs, ys):
        preds, losses = [], []
        for i in range(0, len(xs), chunk):
            p, l = logits_stats(tf.constant(xs[i:i + chunk]), tf.constant(ys[i:i + chunk]))
            preds.append(p.numpy())
            losses.append(l.numpy())
        return np.concatenate(preds), np.concatenate(losses)
    return predict
