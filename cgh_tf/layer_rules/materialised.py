"""Per-example kernel gradients of Dense / EinsumDense over positions, materialised, with Σ_i g_i
taken by the rule instead of the tape.

A kernel applied at T positions has per-example gradient G_i = Σ_t a_t ⊗ b_t (a [T, fan_in] the
input, b [T, fan_out] the output gradient). Exact forms of ‖G_i‖²:

| form | extra multiply-adds per example | Σ_i g_i |
|---|---|---|
| Gram, Σ_{s,t} (a_s·a_t)(b_s·b_t) (`base.outer_sum_sq_norm`) | T²(fan_in + fan_out) | the tape: one [fan_in, m·T] × [m·T, fan_out] matmul |
| materialised, ‖G_i‖² with G_i = a_iᵀ b_i (this module) | T·fan_in·fan_out, *replacing* the tape's weight gradient (the same multiply-adds) | the rule: Σ_i G_i (`ctx.weight(kernel, tape_sum=False)`) |

So the materialised form costs only what its batched matmul loses against the tape's one large
matmul, plus two passes over m·fan_in·fan_out values (squares, sum over examples). Measured on a
2-core x86 CPU (benchmarks/RESULTS.md, 2026-12-07 "materialised kernel gradients"): per layer at
m = T = 64 and widths 128-1000 the two forms are within the noise of each other, the materialised
one ahead on 128 → 128 and 128 → 1000 (`benchmarks/dense_forms.py`); on whole train steps the
coherence step / plain step drops from 1.30-1.32 to 1.09-1.19 on the grouped-query decoder block
and the masked LM of `benchmarks/sequence_models.py` (the same rounds). The rule takes it (`chosen`) when the Gram form's multiply-adds are at
least half the materialised ones, i.e. 2·T·(fan_in + fan_out) ≥ fan_in·fan_out, in float32 /
float64 only (a 16-bit layer keeps Keras' own weight gradient: the tape's Σ is what Keras
applies), with T static and > 1 (T = 1: ‖a‖²‖b‖², no matmul), and while m·kernel size stays
within `ELEMENT_BUDGET` (memory; an unknown batch size is budgeted as `ASSUMED_EXAMPLES`), and not
inside a whole-step XLA compile (`jit_compile=True`): there XLA's CPU batched dot makes the
materialised form the slower one (the coherence step / plain step 1.34 against 1.20 with the Gram
form on the grouped-query decoder block, 1.49 against 1.26 on the masked LM, in the same rounds).
The choice is made per call at trace time, in the rule's `call`, because it decides whether the
tape computes the weight gradient.
"""

import tensorflow as tf

from cgh_tf import keras_internals
from cgh_tf.layer_rules import base

ENABLED = True  # False: every call keeps the Gram / tape forms (benchmarks, tests of those forms)
GRAM_SHARE = 0.5  # materialise when the Gram form's multiply-adds are ≥ this × the materialised ones
ELEMENT_BUDGET = 1 << 25  # materialised per-example gradient elements (128 MB in float32)
ASSUMED_EXAMPLES = 256  # the budget's m when the batch size is unknown


def chosen(positions, fan_in, fan_out, examples, dtype, blocks=1):
    """True if one call's per-example kernel gradients are materialised (see the module docstring).

    positions: T per example and block (None = unknown); fan_in, fan_out: per block; examples: m
    (None = unknown); dtype: the layer input's; blocks: S independent blocks of the kernel."""
    if not ENABLED or positions is None or positions <= 1:
        return False
    if tf.as_dtype(dtype) not in (tf.float32, tf.float64):
        return False
    if keras_internals.in_xla_compilation():  # XLA's CPU batched dot: the Gram form is faster
        return False
    if (examples or ASSUMED_EXAMPLES) * blocks * fan_in * fan_out > ELEMENT_BUDGET:
        return False
    return positions * (fan_in + fan_out) >= GRAM_SHARE * fan_in * fan_out


def statistic(per_example, tape_skipped):
    """`Statistic` of a kernel from its calls' materialised per-example gradients.

    per_example: one [m, *kernel shape] tensor per call (the same m); tape_skipped: per call, True
    if it read the kernel with tape_sum=False (its Σ_i g_i is returned here; the others' comes
    from the tape). Returns squared norms [m] of the per-example gradient summed over calls."""
    total = per_example[0] if len(per_example) == 1 else tf.add_n(per_example)
    sums = [tf.reduce_sum(g, axis=0) for g, skipped in zip(per_example, tape_skipped) if skipped]
    grad_sum = None if not sums else sums[0] if len(sums) == 1 else tf.add_n(sums)
    return base.Statistic(base.sum_sq(total), grad_sum)
