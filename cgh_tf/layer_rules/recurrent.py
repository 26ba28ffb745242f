"""SimpleRNN, LSTM, GRU (reset_after): the recurrent kernels as Dense layers over time.

With x_t the input and h_{t-1} the previous output of step t, every cell computes from two
pre-activations, zx_t = x_t W (+ the input bias) and zh_t = h_{t-1} U (+ GRU's recurrent bias), so
per example

    ∇W ℓ_i = Σ_t x_t ⊗ δzx_t,   ∇U ℓ_i = Σ_t h_{t-1} ⊗ δzh_t,   ∇b ℓ_i = Σ_t δzx_t (and Σ_t δzh_t)

with δz = ∂ℓ/∂z, and the squared norms follow as for Dense on sequences (`base.outer_sum_sq_norm`).
The rule runs the layer's recurrence itself: zx for all steps at once, outside the loop; inside the
loop (`tf.scan` over time) zh_t = h_{t-1} U + p_t, where p is a zero "probe" tensor [m, T, G] fed in
from outside, so that the tape's gradient w.r.t. p is δzh (a tensor made inside a loop has no
gradient of its own). The loop also returns every h_{t-1}. Keras' semantics are kept: masks (a
masked step keeps the states, and outputs zeros when `zero_output_for_mask`, else the previous
output), `go_backwards` (outputs in processing order), `return_sequences`, `return_state`,
`initial_state`. Σ_i g_i comes from the tape.

Matches Keras' own LSTM / GRU / SimpleRNN (own `call` and `inner_loop`) with their own cell, no
dropout, not stateful; GRU only with `reset_after=True` (the default). Anything else (custom cells,
dropout, stateful, GRU reset_after=False, ConvLSTM, StackedRNNCells) takes the exact fallback.
"""

import keras
import tensorflow as tf

from cgh_tf.layer_rules import base

L = keras.layers
_LAYERS_AND_CELLS = ((L.LSTM, L.LSTMCell), (L.GRU, L.GRUCell), (L.SimpleRNN, L.SimpleRNNCell))


class RecurrentRule(base.LayerRule):
    name = "recurrent"

    @staticmethod
    def matches(layer):
        for layer_cls, cell_cls in _LAYERS_AND_CELLS:
            if (type(layer).call is layer_cls.call and isinstance(layer, layer_cls)
                    and type(layer).inner_loop is layer_cls.inner_loop
                    and type(layer.cell) is cell_cls):
                cell = layer.cell
                return (not layer.stateful and not cell.dropout and not cell.recurrent_dropout
                        and getattr(cell, "reset_after", True))
        return False

    @staticmethod
    def call(layer, sequences, ctx, initial_state=None, mask=None, training=False):
        cell = layer.cell
        kernel, recurrent = ctx.weight(cell.kernel), ctx.weight(cell.recurrent_kernel)
        input_bias = recurrent_bias = None
        if cell.use_bias:
            bias = ctx.weight(cell.bias)
            input_bias, recurrent_bias = (bias[0], bias[1]) if bias.shape.rank == 2 else (bias, None)
        x = tf.convert_to_tensor(sequences)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if layer.go_backwards:
            x = tf.reverse(x, [1])
            mask = None if mask is None else tf.reverse(mask, [1])
        zx = tf.matmul(x, kernel)
        if input_bias is not None:
            zx = zx + input_bias
        zx = ctx.output(zx)
        probe = ctx.output(tf.zeros_like(zx))
        states = _initial_states(layer, x, initial_state)
        outputs, final_states, h_prev = _scan(layer, zx, probe, recurrent, recurrent_bias, states,
                                              mask)
        ctx.keep(inputs=x, previous=h_prev)
        dtype = layer.compute_dtype
        output = outputs if layer.return_sequences else outputs[:, -1]
        output = tf.cast(output, dtype)
        if layer.return_state:
            return [output] + [tf.cast(s, dtype) for s in final_states]
        return output

    @staticmethod
    def statistics(layer, calls):
        cell = layer.cell
        fan_in, units = cell.kernel.shape[0], cell.units
        groups = cell.kernel.shape[1]
        x = _positions([c["inputs"] for c in calls], fan_in)
        h = _positions([c["previous"] for c in calls], units)
        dzx = _positions([c.output_grads[0] for c in calls], groups)
        dzh = _positions([c.output_grads[1] for c in calls], groups)
        out = {id(cell.kernel): base.Statistic(base.outer_sum_sq_norm(x, dzx)),
               id(cell.recurrent_kernel): base.Statistic(base.outer_sum_sq_norm(h, dzh))}
        if cell.use_bias:
            sq = base.sum_sq(tf.reduce_sum(dzx, axis=1))
            if cell.bias.shape.rank == 2:  # GRU reset_after: [input bias, recurrent bias]
                sq = sq + base.sum_sq(tf.reduce_sum(dzh, axis=1))
            out[id(cell.bias)] = base.Statistic(sq)
        return out


def _positions(tensors, features):
    return base.full_precision(base.concat_positions([base.by_examples(t, features)
                                                      for t in tensors]))


def _initial_states(layer, x, initial_state):
    """The cell's states at t = 0 (a list: [h] or LSTM's [h, c]) in the compute dtype."""
    if initial_state is None:
        batch = tf.shape(x)[0]
        count = 2 if isinstance(layer.cell, L.LSTMCell) else 1
        return [tf.zeros(tf.stack([batch, layer.cell.units]), x.dtype) for _ in range(count)]
    if not isinstance(initial_state, (list, tuple)):
        initial_state = [initial_state]
    return [tf.cast(s, x.dtype) for s in initial_state]


def _step(cell, zx_t, zh_t, states):
    """One step of the cell from its pre-activations: (output h_t, new states)."""
    act, rec = cell.activation, getattr(cell, "recurrent_activation", None)
    if isinstance(cell, L.LSTMCell):
        z0, z1, z2, z3 = tf.split(zx_t + zh_t, 4, axis=-1)
        c = rec(z1) * states[1] + rec(z0) * act(z2)
        h = rec(z3) * act(c)
        return h, [h, c]
    if isinstance(cell, L.GRUCell):
        x_z, x_r, x_h = tf.split(zx_t, 3, axis=-1)
        r_z, r_r, r_h = tf.split(zh_t, 3, axis=-1)
        z, r = rec(x_z + r_z), rec(x_r + r_r)
        h = z * states[0] + (1 - z) * act(x_h + r * r_h)
        return h, [h]
    h = zx_t + zh_t
    h = act(h) if act is not None else h
    return h, [h]


def _scan(layer, zx, probe, recurrent, recurrent_bias, states, mask):
    """Runs the recurrence over time. Returns (outputs [m, T, units] in processing order, final
    states, h_{t-1} [m, T, units])."""
    cell = layer.cell
    time_major = [tf.transpose(t, [1, 0, 2]) for t in (zx, probe)]
    keep = (tf.ones(tf.shape(time_major[0])[:2], tf.bool) if mask is None
            else tf.transpose(tf.cast(mask, tf.bool), [1, 0]))
    zero = tf.zeros_like(states[0])

    def step(carry, inputs):
        previous_output, old_states = carry[0], list(carry[1:])
        zx_t, p_t, keep_t = inputs
        zh_t = tf.matmul(old_states[0], recurrent) + p_t
        if recurrent_bias is not None:
            zh_t = zh_t + recurrent_bias
        output, new_states = _step(cell, zx_t, zh_t, old_states)
        keep_t = keep_t[:, None]
        new_states = [tf.where(keep_t, n, o) for n, o in zip(new_states, old_states)]
        output = tf.where(keep_t, output,
                          zero if layer.zero_output_for_mask else previous_output)
        return (output, *new_states, old_states[0])

    initial = (zero, *states, zero)
    scanned = tf.scan(lambda carry, inputs: step(carry[:-1], inputs),
                      (time_major[0], time_major[1], keep), initializer=initial)
    outputs, previous = scanned[0], scanned[-1]
    final_states = [s[-1] for s in scanned[1:-1]]
    batch_major = [tf.transpose(t, [1, 0, 2]) for t in (outputs, previous)]
    return batch_major[0], final_states, batch_major[1]
