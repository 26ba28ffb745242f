"""Differential test matrix: cgh_tf's coherence and per-example gradients on many architectures
against a brute-force reference (tests/matrix_models.py: one tape per example, float64 NumPy).

| check | cgh_tf call | compared with the reference |
|---|---|---|
| measure | `coherence.measure(..., per_layer=True)` | m_coherence, alpha, pairwise_coherence, per_layer[name].m_coherence / .pairwise_coherence |
| sums | `per_example.gradients_and_sq_norms` | sq_norms [m, V], grad_sum (None = zero) |
| per_example | `coherence.per_example_gradients` | every [m, *var.shape] |
| alignment | `coherence.alignment` | g_i·S, ‖g_i‖², a_i = (g_i·S − ‖g_i‖²)/‖g_i‖², m-coherence; the path taken (`EXACT_ALIGNMENT`, `FACTORED_ALIGNMENT`) |
| trainer | `cgh_tf.Model.fit`, SGD(0), coherence_every=1 | history "m_coherence", "alpha" |
| update | `cgh_tf.Model.fit`, one SGD step, each mean aggregator (`UPDATE_OPTIONS`) | weights and loss of `keras.Model.fit` |

The Keras-semantics cases (masks, per-token and class weights, a dict of outputs with loss_weights)
pass their sample weights / class weights / loss_weights to every call, and their reference is the
decomposition of Keras' batch loss (`matrix_models._decomposed_loss`).

Tolerances (`Tolerance`): relative 1e-5 on float64 models; the absolute floor of 1e-9 × the largest
reference magnitude (of sq_norms, or of the whole gradient for per-variable arrays) only forgives
float64 round-off on entries that cancel to ~0. The trainer's metrics are computed and stored in
float32, so they get 1e-5 relative + 1e-6 absolute. mixed_float16 gets 2e-2 (`MIXED`).

Crash safety: architectures with MultiHeadAttention / EinsumDense (`matrix_models`: `isolated`)
run all their checks in one subprocess per group (`python tests/test_coherence_matrix.py GROUP`),
since tf.vectorized_map over them has killed the Python process (oneDNN batched matmul). The
groups start together when the first test of this module runs (they use the second core while the
in-process tests run); each prints one result line per check, so a crash fails only the checks it
did not reach, with the returncode and the end of its stderr.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import traceback
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf
from cgh_tf import aggregators, coherence, per_example
from cgh_tf import alignment as alignment_module
from cgh_tf.layer_rules import conv

import matrix_models
from matrix_models import ARCHITECTURES, Reference, build, dtype_policy, memoised_reference

ALL = list(ARCHITECTURES)
TRAINER = [name for name, arch in ARCHITECTURES.items() if arch.trainer]
UPDATE = [name for name, arch in ARCHITECTURES.items() if arch.update]
RESULT_PREFIX = "CGH_MATRIX_RESULT "
SUBPROCESS_TIMEOUT = 600  # seconds, for a whole group


# ----------------------------------------------------------------------------------------------
# Comparison


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """|got − want| ≤ rtol·|want| + atol + floor·scale, element-wise (`Comparison.close`)."""

    rtol: float
    atol: float = 0.0
    floor: float = 0.0


EXACT = Tolerance(rtol=1e-5, floor=1e-9)
FLOAT32_METRIC = Tolerance(rtol=1e-5, atol=1e-6)
# mixed_float16: float16 has a unit round-off of 2^-11 ≈ 5e-4; inputs, activations, logits and the
# output gradients are all rounded to it and the squared norms / sums accumulate those errors, so
# agreement with the float64 reference to ~1e-2 relative (of the array's scale) is all one can ask.
MIXED = Tolerance(rtol=2e-2, floor=2e-2)


class Comparison:
    """Collects every mismatch of one check, then fails once with all of them (got vs reference)."""

    def __init__(self, tolerance: Tolerance):
        self.tolerance = tolerance
        self.failures = []

    def fail(self, message):
        self.failures.append(message)

    def close(self, what, got, want, scale=None):
        """Element-wise check; `scale` (default max|want|) sets the absolute floor, so an array that
        is ~0 by symmetry (e.g. attention key biases) is measured against the whole gradient."""
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            return self.fail(f"{what}: shape {got.shape}, reference {want.shape}")
        t = self.tolerance
        if scale is None:
            scale = np.max(np.abs(want)) if want.size else 0.0
        excess = np.abs(got - want) - (t.rtol * np.abs(want) + t.atol + t.floor * scale)
        bad = ~(excess <= 0)  # NaN counts as bad
        if not bad.any():
            return
        worst = np.unravel_index(np.argmax(np.where(np.isnan(excess), np.inf, excess)), want.shape)
        g, w = got[worst], want[worst]
        where = ""
        if want.ndim:
            where = f" at {tuple(int(i) for i in worst)} ({int(bad.sum())}/{bad.size} entries off)"
        norm_err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)
        self.fail(f"{what}: got {g:.10g}, reference {w:.10g}{where}; "
                  f"rel err {abs(g - w) / max(abs(w), 1e-300):.3g}, norm-wise {norm_err:.3g}")

    def check(self):
        if self.failures:
            raise AssertionError("\n".join(self.failures))


def _dense_or_zeros(g, variable):
    return np.zeros(variable.shape) if g is None else np.asarray(tf.convert_to_tensor(g))


def _largest(arrays):
    """max |entry| over a list of arrays: the scale of a whole gradient."""
    return max(float(np.max(np.abs(a), initial=0.0)) for a in arrays)


# ----------------------------------------------------------------------------------------------
# The checks: cgh_tf first (an unbuilt model must be built by it), then the reference


def loss_argument(case):
    """The `loss=` of the calls: the case's loss, or None (the compiled loss) when it has
    loss_weights, which only `compile` takes."""
    if case.loss_weights is None:
        return case.loss
    case.model.compile(**case.compile_args())
    return None


def check_measure(case, reference_of, tolerance):
    """(a) measure(per_layer=True) against the reference m-coherence, alpha and per-layer values."""
    stats = coherence.measure(case.model, case.x, case.y, loss=loss_argument(case), per_layer=True,
                              sample_weight=case.weights_of_examples())
    ref = reference_of()
    cmp = Comparison(tolerance)
    cmp.close("m_coherence", stats.m_coherence, ref.m_coherence())
    cmp.close("alpha", stats.alpha, ref.m_coherence() / ref.m)
    want = ref.per_layer_m_coherence(per_example.variable_layer_names(case.model))
    if set(stats.per_layer) != set(want):
        cmp.fail(f"per_layer names {sorted(stats.per_layer)}, expected {sorted(want)}")
    for name in set(stats.per_layer) & set(want):
        cmp.close(f"per_layer[{name}].m_coherence", stats.per_layer[name].m_coherence, want[name])
    # scale 1: the statistic lies in [−1/(m−1), 1] and is exactly 0 for orthogonal gradients (e.g.
    # an embedding's rows of different tokens), so its absolute floor is measured against 1
    cmp.close("pairwise_coherence", stats.pairwise_coherence, ref.pairwise_coherence(), scale=1.0)
    pairwise = ref.per_layer(ref.pairwise_coherence, per_example.variable_layer_names(case.model))
    for name in set(stats.per_layer) & set(pairwise):
        cmp.close(f"per_layer[{name}].pairwise_coherence", stats.per_layer[name].pairwise_coherence,
                  pairwise[name], scale=1.0)
    cmp.check()


def check_sums(case, reference_of, tolerance):
    """(b) gradients_and_sq_norms: sq_norms [m, V] and grad_sum per variable."""
    sums = per_example.gradients_and_sq_norms(
        case.model, tf.constant(case.x), tf.nest.map_structure(tf.constant, case.y),
        loss_argument(case), sample_weight=case.weights_of_examples())
    ref = reference_of()
    cmp = Comparison(tolerance)
    variables = case.model.trainable_variables
    cmp.close("sq_norms", sums.sq_norms.numpy(), ref.sq_norms())
    if len(sums.grad_sum) != len(variables):
        cmp.fail(f"grad_sum has {len(sums.grad_sum)} entries for {len(variables)} variables")
    scale = _largest(ref.grad_sum())
    for v, got, want in zip(variables, sums.grad_sum, ref.grad_sum()):
        cmp.close(f"grad_sum[{v.path}]", _dense_or_zeros(got, v), want, scale)
    cmp.check()


def check_per_example(case, reference_of, tolerance):
    """(c) per_example_gradients: every [m, *var.shape] tensor."""
    grads = coherence.per_example_gradients(case.model, case.x, case.y, loss=loss_argument(case),
                                            sample_weight=case.weights_of_examples())
    ref = reference_of()
    cmp = Comparison(tolerance)
    variables = case.model.trainable_variables
    if len(grads) != len(variables):
        cmp.fail(f"{len(grads)} gradients for {len(variables)} variables")
    scale = _largest(ref.grads)
    for v, got, want in zip(variables, grads, ref.grads):
        cmp.close(f"per_example[{v.path}]", np.asarray(got), want, scale)
    cmp.check()


# Architectures whose g_i·S must come from alignment's exact path (forward mode cannot be traced
# through Keras' GRU symbolic loop, also inside Bidirectional; Keras' grouped Conv2D fails the
# Σ_i g_i·S = ‖S‖² check).
EXACT_ALIGNMENT = {"gru_classifier", "bidirectional_lstm_gru", "grouped_conv2d"}
# Architectures whose every trainable variable is a Dense layer's applied once per example: g_i·S
# from the first pass's rank-one factors, no second pass (`alignment.FACTORED`).
FACTORED_ALIGNMENT = {"mlp", "nested_sequential", "unbuilt_sequential", "two_outputs_dict",
                      "class_weights"}


def check_alignment(case, reference_of, tolerance, name=None):
    """(d) coherence.alignment in batches of 5 (a stacked block and a remainder batch), or in one
    batch when the case's loss divides by a count of the whole sample (`divisors`: masked tokens),
    which makes ℓ_i depend on the batch it is computed in."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="cgh_tf.alignment")
        got = coherence.alignment(case.model, case.x, case.y, loss=loss_argument(case),
                                  batch_size=None if case.divisors else 5,
                                  sample_weight=case.weights_of_examples())
    ref = reference_of()
    cmp = Comparison(tolerance)
    dots, sq_norms = ref.dots_with_sum(), ref.sq_norms().sum(axis=1)
    cmp.close("dot_with_sum", got.dot_with_sum, dots)
    cmp.close("sq_norms", got.sq_norms, sq_norms)
    cmp.close("alignment", got.alignment, (dots - sq_norms) / sq_norms)
    cmp.close("stats.m_coherence", got.stats.m_coherence, ref.m_coherence())
    if name is not None:
        want = (alignment_module.EXACT if name in EXACT_ALIGNMENT else alignment_module.FACTORED
                if name in FACTORED_ALIGNMENT else alignment_module.FORWARD_MODE)
        if got.method != want:
            cmp.fail(f"method {got.method!r}, expected {want!r}")
    cmp.check()


def fit_one_batch(name, sample_weight=None, jit_compile=False):
    """(reference at the initial weights, history) of one epoch of one batch with SGD(0) and
    coherence_every=1, on a `cgh_tf.Model` of architecture `name`."""
    case = build(name, cgh_tf.Model)
    ref = memoised_reference(name, case)  # before fit, which moves BatchNorm moving statistics
    case.model.compile(optimizer=keras.optimizers.SGD(0.0), **case.compile_args(),
                       coherence_every=1, jit_compile=jit_compile)
    history = fit_batch(case, sample_weight)
    return ref, history.history


def fit_batch(case, sample_weight=None):
    """One epoch of the case's M examples as one batch, with its (or the given) sample weights."""
    weights = case.sample_weight if sample_weight is None else sample_weight
    return case.model.fit(case.x, case.y, sample_weight=weights,
                          class_weight=case.class_weight, batch_size=matrix_models.M, epochs=1,
                          shuffle=False, verbose=0)


# Mean aggregators through each gradient source of cgh_tf.Model: the per-example engine sharing
# its pass with coherence, the per-example aggregator alone and sharing its pass.
UPDATE_OPTIONS = [{"coherence_every": 1}, {"aggregation": aggregators.Winsorize(0.0)},
                  {"aggregation": aggregators.Winsorize(0.0), "coherence_every": 1}]
UPDATE_TOLERANCE = Tolerance(rtol=1e-9, floor=1e-12)


def check_update(name):
    """One SGD step of `cgh_tf.Model` with each of `UPDATE_OPTIONS` against `keras.Model`'s step
    on the same batch: weights (float64) and every value Keras logs (float32)."""
    expected = build(name)
    expected.model.compile(optimizer=keras.optimizers.SGD(0.1), **expected.compile_args())
    want_logs = fit_batch(expected).history  # loss, and each output's loss with several
    want = expected.model.get_weights()
    cmp, logged = Comparison(UPDATE_TOLERANCE), Comparison(FLOAT32_METRIC)  # Keras logs float32
    for options in UPDATE_OPTIONS:
        case = build(name, cgh_tf.Model)
        case.model.compile(optimizer=keras.optimizers.SGD(0.1), **case.compile_args(), **options)
        got_logs = fit_batch(case).history
        for key, value in want_logs.items():
            logged.close(f"{options} logged {key}", got_logs[key][0], value[0])
        scale = _largest(want)
        for j, (got, weights) in enumerate(zip(case.model.get_weights(), want)):
            cmp.close(f"{options} weights[{j}]", got, weights, scale)
    cmp.failures += logged.failures
    cmp.check()


def compare_trainer_metrics(ref: Reference, history):
    cmp = Comparison(FLOAT32_METRIC)
    cmp.close("history m_coherence", history["m_coherence"][0], ref.m_coherence())
    cmp.close("history alpha", history["alpha"][0], ref.m_coherence() / ref.m)
    cmp.check()


def check_trainer(name):
    """Trainer metric (coherence pass in inference mode, the default) against the reference."""
    compare_trainer_metrics(*fit_one_batch(name))


CHECKS = {"measure": check_measure, "sums": check_sums, "per_example": check_per_example,
          "alignment": check_alignment}


def run_check(name, check):
    """Runs one check of architecture `name` in this process (float64 Keras must be set)."""
    if check == "trainer":
        return check_trainer(name)
    if check == "update":
        return check_update(name)
    case = build(name)
    extra = {"name": name} if check == "alignment" else {}
    CHECKS[check](case, lambda: memoised_reference(name, case), EXACT, **extra)


# ----------------------------------------------------------------------------------------------
# Subprocess isolation


def group_checks(group):
    """[(architecture, check)] run in subprocess `group`, in order."""
    return [(name, check) for name, arch in ARCHITECTURES.items() if arch.isolated == group
            for check in [*CHECKS, *(["trainer"] if arch.trainer else []),
                          *(["update"] if arch.update else [])]]


def main(group):
    """Subprocess entry point: runs the group's checks in float64 Keras, one result line each."""
    with dtype_policy("float64", "float64"):
        for name, check in group_checks(group):
            try:
                run_check(name, check)
                result = {"ok": True}
            except Exception:  # noqa: BLE001 (reported to the parent test)
                result = {"ok": False, "error": traceback.format_exc()}
            print(RESULT_PREFIX + json.dumps({"id": f"{name}/{check}", **result}), flush=True)


class IsolatedRuns:
    """Subprocess groups, started together up front (they run beside the in-process tests) and
    waited for on first use; hands out their per-check results."""

    def __init__(self, groups):
        self.started = {group: self._start(group) for group in groups}
        self.finished = {}

    @staticmethod
    def _start(group):
        """(process, stdout file, stderr file); files, not pipes, so a chatty child never blocks."""
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        process = subprocess.Popen([sys.executable, __file__, group], stdout=out, stderr=err, text=True,
                                   env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return process, out, err

    def _finish(self, group):
        """(returncode or "timeout", {check id: result}, stderr) of a group."""
        process, out, err = self.started.pop(group, None) or self._start(group)
        try:
            returncode = process.wait(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode = "timeout"
        out.seek(0)
        err.seek(0)
        results = {}
        for line in out.read().splitlines():
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
                results[result["id"]] = result
        return returncode, results, err.read()

    def check(self, name, check):
        group = ARCHITECTURES[name].isolated
        if group not in self.finished:
            self.finished[group] = self._finish(group)
        returncode, results, stderr = self.finished[group]
        result = results.get(f"{name}/{check}")
        if result is None:
            pytest.fail(f"subprocess group {group!r} ended (returncode {returncode}) before "
                        f"{name}/{check}; stderr tail:\n{stderr[-4000:]}")
        if not result["ok"]:
            pytest.fail(result["error"], pytrace=False)
        assert returncode == 0, f"subprocess returncode {returncode}; stderr tail:\n{stderr[-4000:]}"

    def close(self):
        """Stops the groups this object started that nobody waited for (deselected tests)."""
        for process, _, _ in self.started.values():
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def isolated(request):
    """IsolatedRuns of the groups whose architectures have a selected test in this module."""
    names = {item.callspec.params.get("name") for item in request.session.items
             if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    runs = IsolatedRuns(sorted({ARCHITECTURES[n].isolated for n in names
                                if n in ARCHITECTURES and ARCHITECTURES[n].isolated}))
    yield runs
    runs.close()


def run(name, check, isolated):
    """One check of `name`, in a subprocess if the architecture is isolated."""
    if ARCHITECTURES[name].isolated:
        isolated.check(name, check)
    else:
        run_check(name, check)


# ----------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", ALL)
def test_measure(name, float64_keras, isolated):
    run(name, "measure", isolated)


@pytest.mark.parametrize("name", ALL)
def test_gradients_and_sq_norms(name, float64_keras, isolated):
    run(name, "sums", isolated)


@pytest.mark.parametrize("name", ALL)
def test_per_example_gradients(name, float64_keras, isolated):
    run(name, "per_example", isolated)


@pytest.mark.parametrize("name", ALL)
def test_alignment(name, float64_keras, isolated):
    run(name, "alignment", isolated)


@pytest.mark.parametrize("name", TRAINER)
def test_trainer_metric(name, float64_keras, isolated):
    run(name, "trainer", isolated)


@pytest.mark.parametrize("name", UPDATE)
def test_update_equals_keras(name, float64_keras, isolated):
    """(masked_lm_causal's Winsorize step found the update racing the exact fallback's XLA
    function, training._after_all.)"""
    run(name, "update", isolated)


def test_batchnorm_case_tells_inference_from_training_mode(float64_keras):
    """The BN moving statistics are far from the batch statistics, so the inference-mode reference
    of the trainer check would not match a coherence pass taken in training mode."""
    case = build("resnet_block_bn")
    inference, training = (case.model(case.x, training=mode).numpy() for mode in (False, True))
    assert np.max(np.abs(inference - training)) > 0.1 * np.max(np.abs(inference))


@pytest.mark.parametrize("min_work", [None, 0])
def test_trainer_metric_in_a_step_compiled_by_xla(float64_keras, monkeypatch, min_work):
    """The BN ResNet block under `jit_compile=True`: the separate inference-mode pass (no
    conditional at coherence_every=1) and the conv rules' paths for whole-step XLA: patches from
    slices for these small convs, or (every conv counted as large) the grouped XLA convolution."""
    paths = []
    if min_work is not None:
        monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER_MIN_WORK", min_work)
        monkeypatch.setattr(conv, "NATIVE_DEPTHWISE", False)  # (else O < K: TF's depthwise kernel)
        operands = conv._Part.operands
        monkeypatch.setattr(conv._Part, "operands",
                            lambda part: paths.append(part.per_example_filter) or operands(part))
    compare_trainer_metrics(*fit_one_batch("resnet_block_bn", jit_compile=True))
    assert set(paths) == ({"grouped"} if min_work is not None else set())


def test_trainer_metric_with_sample_weights(float64_keras):
    """With sample weights w_i, Keras minimises Σ w_i ℓ_i / m, so the per-example gradients that
    make up the update are w_i·g_i; the metric should be their coherence (m = batch size)."""
    weights = np.random.default_rng(0).uniform(0.25, 2.0, matrix_models.M)
    ref, history = fit_one_batch("mlp", sample_weight=weights)
    compare_trainer_metrics(ref.weighted(weights), history)


def float64_twin(name, case):
    """The architecture `name` built in float64 Keras with the weights of `case.model`."""
    with dtype_policy("float64", "float64"):
        twin = build(name)
    twin.model.set_weights([np.asarray(w, np.float64) for w in case.model.get_weights()])
    return twin


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", ["mlp", "cnn_pool"])
def test_mixed_float16(name, check):
    """mixed_float16 (float32 variables, float16 compute) against a float64 twin (tolerance MIXED)."""
    with dtype_policy("mixed_float16", keras.config.floatx()):
        case = build(name)
        CHECKS[check](case, lambda: memoised_reference(name, float64_twin(name, case)), MIXED)


# ----------------------------------------------------------------------------------------------
# Issue 21, part B: the sequence / wrapper architectures need no second pass for the metric

SHARED_PASS = ["time_distributed_conv", "bidirectional_lstm_gru", "convnext_layerscale",
               "grouped_query_attention"]


@pytest.mark.parametrize("name", SHARED_PASS)
def test_wrapper_and_rnn_architectures_are_mode_independent(name, float64_keras):
    """No layer of these computes differently in training mode, so `test_trainer_metric` above
    checks the metric taken from the update's own pass (cgh_tf.mode_dependence)."""
    from cgh_tf import mode_dependence
    assert mode_dependence.mode_dependent_layers(build(name).model) == []


if __name__ == "__main__":
    main(sys.argv[1])
