"""Coherence under 16-bit compute policies: a one-time warning, and statistics in float32.

    check_coherence_dtype(value) -> None | "float32"       (one-line ValueError otherwise)
    check_float32_possible(model, coherence_dtype)          (one-line ValueError: 16-bit variables)
    warn_if_16_bit(model, coherence_dtype)                  (once per model)
    computed_in(model, coherence_dtype)                     (context manager, at trace time)

Under `mixed_float16` / `mixed_bfloat16` the layers compute in 16 bits, so the per-example
gradients, and the coherence made of them, carry the 16-bit rounding of the forward and backward
pass: measured against a float64 brute-force loop (`python -m benchmarks.precision`, batch 64), the
per-layer m-coherence is off by up to `EXPECTED_RELATIVE_ERROR` (bfloat16 keeps 8 significant bits,
float16 11). `coherence_dtype="float32"` (on `cgh_tf.Model.compile` and `coherence.measure`)
computes the coherence statistics with every 16-bit layer switched to the float32 policy while the
computation is traced (the variables of a mixed policy are float32 already, so nothing else
changes); the training update itself stays in the model's policy. Its values agree with the float64
loop to float32 round-off. Cost: in `cgh_tf.Model` the metric can no longer share the update's
pass (a second pass, in float32).
"""

import contextlib
import warnings
import weakref

from cgh_tf import keras_internals

COHERENCE_DTYPES = (None, "float32")
_SIXTEEN_BIT = ("float16", "bfloat16")
# Largest relative error of a per-layer m-coherence seen against float64 (benchmarks/precision.py).
EXPECTED_RELATIVE_ERROR = {"bfloat16": "up to 2 % (median 0.1-0.3 %)",
                           "float16": "up to 0.6 % (median below 0.05 %)"}

_WARNED = weakref.WeakSet()


def check_coherence_dtype(value):
    """`value` if it is None (the model's own compute dtype) or "float32"; else a one-line error."""
    if value not in COHERENCE_DTYPES:
        raise ValueError(f"coherence_dtype must be None (the model's compute dtype) or "
                         f"'float32'; got {value!r}.")
    return value


def sixteen_bit_dtype(model):
    """"float16" or "bfloat16" if some layer of `model` computes in it (the first found), else
    None."""
    layers = _sixteen_bit_layers(model)
    return layers[0].compute_dtype if layers else None


def warn_if_16_bit(model, coherence_dtype):
    """Warns once per model that its coherence is computed in 16 bits (unless coherence_dtype is
    "float32"), naming the expected relative error and the option."""
    dtype = sixteen_bit_dtype(model)
    if dtype is None or coherence_dtype == "float32" or model in _WARNED:
        return
    _WARNED.add(model)
    warnings.warn(
        f"cgh_tf: the coherence of model '{model.name}' is computed in {dtype} (its layers' dtype "
        f"policy): expect a relative error of about {EXPECTED_RELATIVE_ERROR[dtype]} on per-layer "
        "m-coherence (measured against float64); pass coherence_dtype='float32' (cgh_tf.Model."
        "compile, coherence.measure) to compute the statistics in float32.", stacklevel=3)


def check_float32_possible(model, coherence_dtype):
    """One-line ValueError (before any work) when coherence_dtype="float32" cannot be honoured:
    layers whose variables are 16-bit (a pure "float16" / "bfloat16" policy) would need their
    variables cast, which is not the computation being measured."""
    if coherence_dtype != "float32":
        return
    sixteen_bit_variables = [layer.name for layer in _sixteen_bit_layers(model)
                             if layer.variable_dtype in _SIXTEEN_BIT]
    if sixteen_bit_variables:
        raise ValueError(
            f"coherence_dtype='float32' needs float32 variables (a mixed policy such as "
            f"'mixed_bfloat16'); layers {sixteen_bit_variables} keep 16-bit variables.")


def _sixteen_bit_layers(model):
    return [layer for layer in keras_internals.flatten_layers(model, include_self=True)
            if layer.compute_dtype in _SIXTEEN_BIT]


@contextlib.contextmanager
def computed_in(model, coherence_dtype):
    """With coherence_dtype="float32": inside the block every layer of `model` that computes in 16
    bits has the float32 policy (what is traced inside computes in float32); restored on exit.
    With None: nothing changes. (`check_float32_possible` first.)"""
    if coherence_dtype != "float32":
        yield
        return
    check_float32_possible(model, coherence_dtype)
    switched = _sixteen_bit_layers(model)
    previous = [layer.dtype_policy for layer in switched]
    try:
        for layer in switched:
            layer.dtype_policy = "float32"
        yield
    finally:
        for layer, policy in zip(switched, previous):
            layer.dtype_policy = policy
