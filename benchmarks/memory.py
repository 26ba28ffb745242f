"""Peak memory (process RSS) of each training mode over a plain Keras SGD step, on CPU.

Run: `python benchmarks/memory.py [--repeats 3 --steps 6 --warmup 3 --fresh]`
     (or `python -m benchmarks.memory`); one configuration: `--one MODE MODEL`.

Issue 10 ("peak memory of a coherence step ≤ 1.5× a plain step") and issue 11 ("peak memory of
each wrapper over plain SGD: RM3 / RA3 hold k − 1 parameter-sized buffers and nothing more;
in-batch M3 holds nothing beyond one step's k group gradients").

| mode        | model class / compile                                                         |
|-------------|-------------------------------------------------------------------------------|
| plain       | `keras.Model`, `SGD(0.01)` (the baseline of every ratio)                      |
| coherence   | `cgh_tf.Model`, `compile(coherence_every=1)`, SGD                             |
| coherence_training | the same with `coherence_training=True` (one shared training-mode pass)  |
| rm3 / ra3   | `keras.Model`, `cgh_tf.RM3(SGD)` / `cgh_tf.RA3(SGD)` (window k = 3)           |
| m3          | `keras.Model`, `cgh_tf.M3(SGD)`: consecutive batches as the k = 3 groups       |
| m3_inbatch  | `cgh_tf.Model`, `compile(optimizer=cgh_tf.M3(SGD))`: 3 contiguous groups       |
| winsorize   | `cgh_tf.Model`, `compile(aggregation="winsorize", winsorize_pct=10)`, SGD      |

Models (the builders of the other benchmarks): `mlp` 784-512-512-10 (benchmarks/coherence.py),
`cnn` Conv2D(32)-pool-Conv2D(64)-pool-Dense(128)-Dense(10) (benchmarks/optimizers.py, "the CNN
of issue 11"), `transformer` the encoder block of benchmarks/transformer_rules.py (sequence 64,
width 128, 4 heads, vocabulary 1,000), `resnet` a small BatchNorm ResNet block defined here
(28×28×1: Conv(32)-BN-ReLU stem, Conv-BN-ReLU-Conv-BN + skip, ReLU, GAP, Dense(10)); batch 128,
transformer 64. `tiny` (Dense 8-16-10, batch 12) is for the test only.

Each step is `model.train_step` of a compiled model in one `tf.function` (as
benchmarks/keras_steps.py), on one fixed random batch.

Method. Every configuration runs in a process of its own. That process (after importing
TensorFlow, Keras and cgh_tf) creates the batch and reads VmRSS from /proc/self/status
(`base`), resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`, which sets
VmHWM to the current RSS), builds and compiles the model and optimizer, runs `--warmup` steps
(traces, optimizer state and RM3's window exist afterwards), reads VmRSS (`ready`) and VmHWM
(`setup peak`), resets the counter again, runs `--steps` steps (each waits for its loss) and
reads VmHWM (`step peak`). Winsorize (~10 s per step here) runs 1 warm-up and 2 measured steps
(it has no cross-step state). Reported, in MB (2^20 bytes):

* step extra = step peak − ready: what the measured steps allocate beyond the memory held after
  warm-up (transient tensors of one step: gradients, activations, group rows, temporaries);
* run extra = max(setup peak, step peak) − base: everything the configuration ever held above
  the imported libraries and the batch: model weights, optimizer state (RM3's k − 1 buffers),
  traced graphs and Keras' metric state, plus the steps' transients;
* peak RSS = the absolute process peak (libraries included, ~0.7 GB), for the ratio of
  absolute peaks.

If /proc/self/clear_refs cannot be written, a 1 ms RSS sampling thread gives the peaks instead
(the `hwm` field of the result line says which). Each configuration is repeated (`--repeats`)
and the median taken. By default one worker process per repeat imports TensorFlow once and
`os.fork`s a fresh child per configuration (importing TF costs ~10–20 s here; the parent runs no
TF op before forking, so each child starts like a fresh interpreter with the libraries loaded).
A forked child does not inherit the page-table entries of file-backed mappings (the libraries'
code), so its RSS would start ~400 MB lower and grow as it re-faults those pages, inflating run
extra (by 13 MB for the plain MLP, 45 MB for RM3); the child therefore first maps the pages that
were resident in the parent (`madvise(MADV_POPULATE_READ)`), after which base, step extra and run
extra match a fresh interpreter's within 0.6 MB (checked on the MLP: plain, coherence, RM3).
`--fresh` starts a new interpreter per configuration instead (`subprocess.run([python, this
file, "--one", mode, model])`, ~2× slower overall).

Expected extra bytes (from the shapes, P = trainable parameters, float32): RM3 / RA3 / M3
consecutive hold (k − 1)·P·4 bytes of history buffers (k = 3) as state — they show in run
extra, not in step extra; in-batch M3 holds, during a step, the k = 3 group gradients, k·P·4
bytes (step extra); winsorized GD at c = 10 % on batch 128 uses the blocked per-example path,
whose reference size is all per-example gradients, m·P·4 bytes (the code processes Dense kernels
in blocks of ≤ 4M values, so much less should be live at once).

Limits. RSS is not the allocator's live bytes: it includes memory freed but cached by the
allocator, pages of libraries touched for the first time, and oneDNN's scratch buffers. So
(1) every child runs with `MALLOC_ARENA_MAX=2` (fewer glibc arenas holding freed memory) and
`MALLOC_MMAP_THRESHOLD_=131072` (a fixed threshold: blocks ≥ 128 KiB — every gradient and
activation of these models — are mmap'ed and returned to the OS when freed; glibc's dynamic
threshold would otherwise keep freed tensors in the heap after the warm-up, and the measured
steps would reuse them and show ~0 extra); `--malloc-default` turns both off. (2) TF's CPU
allocator stats (`tf.config.experimental.get_memory_info("CPU:0")`) are not available in this
build ("Allocator stats not available for device 'CPU:0'"), hence RSS. (3) Step extra misses
memory that the warm-up allocated and kept (caches), and run extra includes tracing (Python graph
objects, XLA compilation for winsorize); neither is exactly "the tensors of one step". (4) Small
values (≲ 2 MB) are at the level of noise: ratios of two small step extras mean little.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 2 ** 20
K = 3  # groups of M3, window of RM3 / RA3
WINSORIZE_PCT = 10.0
MODES = ("plain", "coherence", "coherence_training", "rm3", "ra3", "m3", "m3_inbatch", "winsorize")
CGH_MODES = ("coherence", "coherence_training", "m3_inbatch", "winsorize")  # cgh_tf.Model; the others keras.Model
MODEL_NAMES = ("mlp", "cnn", "transformer", "resnet", "tiny")
BATCH = {"mlp": 128, "cnn": 128, "transformer": 64, "resnet": 128, "resnet_frozen": 128, "tiny": 12}
LABELS = {"mlp": "MLP 784-512-512-10", "cnn": "CNN 32-pool-64-pool-128-10",
          "transformer": "Transformer encoder block", "resnet": "BN ResNet block",
          "resnet_frozen": "BN ResNet block, BN frozen",
          "tiny": "tiny MLP 8-16-10"}
# Issue 10: coherence vs plain on four models; issue 11: every wrapper vs SGD on MLP and CNN.
ISSUE10 = [(m, mode) for m in ("mlp", "cnn", "transformer", "resnet") for mode in ("plain", "coherence")]
ISSUE10 += [("resnet", "coherence_training")]  # mode-dependent: the shared training-mode pass
ISSUE11 = [(m, mode) for m in ("mlp", "cnn")
           for mode in ("plain", "rm3", "ra3", "m3", "m3_inbatch", "winsorize")]
CONFIGS = list(dict.fromkeys(ISSUE10 + ISSUE11))
SLOW = {"winsorize": (1, 2)}  # mode: (warm-up steps, measured steps) at most


def malloc_env(default_malloc=False):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    if not default_malloc:
        env.update(MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072")
    return env


# ------------------------------------------------------------------------------ one configuration
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakCounter:
    """Peak RSS since the last `reset()`: the kernel's VmHWM (reset through clear_refs), else a
    1 ms sampling thread."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.kind = "VmHWM"
        except OSError:
            self.kind = "sampled"
            self._peak = _status_kb("VmRSS")
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self._peak = max(self._peak, _status_kb("VmRSS"))
            time.sleep(0.001)

    def reset(self):
        if self.kind == "VmHWM":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            self._peak = _status_kb("VmRSS")

    def peak_kb(self):
        return _status_kb("VmHWM") if self.kind == "VmHWM" else max(self._peak, _status_kb("VmRSS"))


def _import():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import cgh_tf  # noqa: F401
    from benchmarks import coherence, optimizers, transformer_rules  # noqa: F401


def resnet_block():
    """Small BatchNorm ResNet block on 28×28×1 (mode-dependent: BN in training mode)."""
    import keras
    L = keras.layers
    inputs = keras.Input((28, 28, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(inputs)))
    r = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(h)))
    r = L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(r))
    h = L.GlobalAveragePooling2D()(L.ReLU()(L.Add()([h, r])))
    return keras.Model(inputs, L.Dense(10)(h), name="resnet_block")


def resnet_block_frozen_bn():
    """The same block with its BatchNorm layers frozen (`trainable=False`), as when fine-tuning:
    inference mode in both modes, so the coherence metric shares the update's pass."""
    import keras
    model = resnet_block()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def tiny_mlp():
    import keras
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(10)], name="tiny")


def builder(model_name):
    from benchmarks import coherence, optimizers, transformer_rules
    return {"mlp": coherence.mlp, "cnn": optimizers.small_cnn,
            "transformer": transformer_rules.encoder_block, "resnet": resnet_block,
            "resnet_frozen": resnet_block_frozen_bn, "tiny": tiny_mlp}[model_name]


INPUT_SHAPES = {"mlp": (784,), "cnn": (28, 28, 1), "transformer": (64,), "resnet": (28, 28, 1),
                "resnet_frozen": (28, 28, 1), "tiny": (8,)}  # one example's input


def make_batch(model_name, rng=None):
    """(x, y) of the model's benchmark batch: token ids for the transformer, else normal floats;
    rng: a NumPy Generator (default: seeded 0)."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0) if rng is None else rng
    size = (BATCH[model_name],) + INPUT_SHAPES[model_name]
    if model_name == "transformer":
        from benchmarks import transformer_rules as t
        x = rng.integers(0, t.VOCAB, size=size).astype("int32")
    else:
        x = rng.normal(size=size).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, 10, size=size[0]))


def make_step(mode, model_name):
    """(tf.function running `model.train_step`, model) for a fresh compiled model."""
    import keras

    import cgh_tf
    from benchmarks import keras_steps
    keras.utils.set_random_seed(0)
    base = builder(model_name)()
    model = (cgh_tf.Model if mode in CGH_MODES else keras.Model)(base.inputs, base.outputs)
    sgd = keras.optimizers.SGD(0.01)
    optimizer = {"rm3": lambda: cgh_tf.RM3(sgd, window=K), "ra3": lambda: cgh_tf.RA3(sgd, window=K),
                 "m3": lambda: cgh_tf.M3(sgd, groups=K),
                 "m3_inbatch": lambda: cgh_tf.M3(sgd, groups=K)}.get(mode, lambda: sgd)()
    options = {"coherence": {"coherence_every": 1},
               "coherence_training": {"coherence_every": 1, "coherence_training": True},
               "winsorize": {"aggregation": "winsorize", "winsorize_pct": WINSORIZE_PCT}}.get(mode, {})
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **options)
    return keras_steps.compiled_train_step(model), model


def measure(mode, model_name, steps, warmup):
    """Measure one configuration in this process (see the module docstring); returns a dict."""
    _import()
    if mode in SLOW:  # ~10 s per step: fewer steps (it has no cross-step state to fill)
        warmup, steps = min(warmup, SLOW[mode][0]), min(steps, SLOW[mode][1])
    x, y = make_batch(model_name)
    gc.collect()
    counter = PeakCounter()
    base = _status_kb("VmRSS")
    counter.reset()
    t0 = time.perf_counter()
    step, model = make_step(mode, model_name)
    for _ in range(warmup):
        float(step(x, y))
    gc.collect()
    ready = _status_kb("VmRSS")
    setup_peak = counter.peak_kb()
    counter.reset()
    t1 = time.perf_counter()
    for _ in range(steps):
        float(step(x, y))
    step_peak = counter.peak_kb()
    t2 = time.perf_counter()
    params = sum(int(v.shape.num_elements()) for v in model.trainable_variables)
    mb = lambda kb: round(kb / 1024, 2)  # noqa: E731
    return {"mode": mode, "model": model_name, "params": params, "batch": BATCH[model_name],
            "base_mb": mb(base), "ready_mb": mb(ready), "setup_peak_mb": mb(setup_peak),
            "step_peak_mb": mb(step_peak), "step_extra_mb": mb(step_peak - ready),
            "run_extra_mb": mb(max(setup_peak, step_peak) - base),
            "peak_rss_mb": mb(max(setup_peak, step_peak)), "hwm": counter.kind,
            "warmup": warmup, "steps": steps, "setup_s": round(t1 - t0, 2), "step_s": round((t2 - t1) / max(steps, 1), 4),
            "malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default")}


def print_result(result):
    print("RESULT " + json.dumps(result), flush=True)


def parse_results(text):
    return [json.loads(line[len("RESULT "):]) for line in text.splitlines() if line.startswith("RESULT ")]


PAGE = os.sysconf("SC_PAGE_SIZE")
MADV_POPULATE_READ = 22  # Linux >= 5.14


def resident_file_pages():
    """[(address, length)] runs of this process's resident pages of file-backed mappings."""
    import numpy as np
    runs = []
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or not parts[5].startswith("/") or parts[5].startswith("/dev/") \
                    or "r" not in parts[1]:
                continue
            start, end = (int(v, 16) for v in parts[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            present = (np.frombuffer(pagemap.read((end - start) // PAGE * 8), np.uint64) >> 63) & 1
            edges = np.flatnonzero(np.diff(np.concatenate([[0], present.astype(np.int8), [0]])))
            runs += [(start + int(a) * PAGE, int(b - a) * PAGE) for a, b in zip(edges[::2], edges[1::2])]
    return runs


def touch(runs):
    """Map the given file pages into this process's page table (a forked child does not inherit
    the page-table entries of file-backed mappings, so its RSS would start lower than a fresh
    interpreter's and grow as it re-faults library pages it shares with the parent)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for address, length in runs:
        if libc.madvise(address, length, MADV_POPULATE_READ) != 0:
            for page in range(address, address + length, PAGE):
                ctypes.string_at(page, 1)


def worker(configs, steps, warmup, timeout):
    """Import once, then fork a fresh child per configuration; print each child's result."""
    _import()
    gc.collect()
    runs = resident_file_pages()
    for model_name, mode in configs:
        result = _forked(model_name, mode, runs, steps, warmup, timeout)
        if "error" in result:  # once more: a crash or timeout of one child is reported, not fatal
            print(f"# {model_name} {mode}: retrying after {result['error'][-300:]}", file=sys.stderr)
            result = _forked(model_name, mode, runs, steps, warmup, timeout)
        print_result(result)


def _forked(model_name, mode, runs, steps, warmup, timeout):
    """Measure one configuration in a forked child; its result dict."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        touch(runs)
        code = 0
        try:
            payload = json.dumps(measure(mode, model_name, steps, warmup))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            payload, code = json.dumps({"mode": mode, "model": model_name, "error": repr(e)[-4000:]}), 1
        with os.fdopen(write, "w") as f:  # < 64 KiB: fits the pipe before the parent reads it
            f.write(payload)
        os._exit(code)
    os.close(write)
    deadline = time.time() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    with os.fdopen(read) as f:
        payload = f.read()
    return json.loads(payload) if payload else {"mode": mode, "model": model_name,
                                                 "error": "timeout or crash"}


# ------------------------------------------------------------------------------------- driver
def run_configs(configs, args):
    """One repeat of every configuration, each in a fresh process; returns result dicts."""
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = malloc_env(args.malloc_default)
    if args.fresh:
        results = []
        for model_name, mode in configs:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", mode, model_name]
                                 + common, env=env, capture_output=True, text=True, timeout=args.timeout)
            results += parse_results(out.stdout) or [{"mode": mode, "model": model_name,
                                                      "error": out.stderr[-500:]}]
        return results
    spec = ",".join(f"{m}:{mode}" for m, mode in configs)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec] + common
                         + ["--timeout", str(args.timeout)], env=env, capture_output=True, text=True,
                         timeout=args.timeout * len(configs) + 120)
    return parse_results(out.stdout)


def median_results(all_results):
    """{(model, mode): dict of medians over repeats} (errors reported and skipped)."""
    grouped = {}
    for r in all_results:
        if "error" in r:
            print(f"# {r['model']} {r['mode']}: {r['error']}", file=sys.stderr)
            continue
        grouped.setdefault((r["model"], r["mode"]), []).append(r)
    keys = ("step_extra_mb", "run_extra_mb", "peak_rss_mb", "base_mb", "step_s", "setup_s")
    spread = lambda rs, f: max(r[f] for r in rs) - min(r[f] for r in rs)  # noqa: E731
    return {k: dict(rs[0], n=len(rs), **{f: statistics.median(r[f] for r in rs) for f in keys},
                    step_spread_mb=spread(rs, "step_extra_mb"), run_spread_mb=spread(rs, "run_extra_mb"))
            for k, rs in grouped.items()}


def ratio(a, b):
    return f"{a / b:.2f}" if b > 0.05 else "–"


def issue10_table(med):
    lines = ["| model | batch | P | mode | step extra MB plain | step extra MB mode | ratio | "
             "run extra MB plain | run extra MB mode | ratio | peak RSS MB plain / mode | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model_name in ("mlp", "cnn", "transformer", "resnet", "tiny"):
        p = med.get((model_name, "plain"))
        for mode in ("coherence", "coherence_training"):
            c = med.get((model_name, mode))
            if not p or not c:
                continue
            lines.append(
                f"| {LABELS[model_name]} | {p['batch']} | {p['params']:,} | {mode} | "
                f"{p['step_extra_mb']:.1f} | {c['step_extra_mb']:.1f} | "
                f"{ratio(c['step_extra_mb'], p['step_extra_mb'])} | "
                f"{p['run_extra_mb']:.1f} | {c['run_extra_mb']:.1f} | "
                f"{ratio(c['run_extra_mb'], p['run_extra_mb'])} | {p['peak_rss_mb']:.0f} / "
                f"{c['peak_rss_mb']:.0f} | {c['peak_rss_mb'] / p['peak_rss_mb']:.3f} |")
    return lines


def expected_mb(mode, params, batch):
    """(expected state MB, expected transient MB, note) from the shapes."""
    size = params * 4 / MB
    return {"plain": (0.0, 0.0, ""),
            "rm3": ((K - 1) * size, 0.0, f"{K - 1}·P·4 state"),
            "ra3": ((K - 1) * size, 0.0, f"{K - 1}·P·4 state"),
            "m3": ((K - 1) * size, 0.0, f"{K - 1}·P·4 state"),
            "m3_inbatch": (0.0, K * size, f"{K}·P·4 per step"),
            "winsorize": (0.0, batch * size, "m·P·4 = all per-example grads (reference)"),
            "coherence": (0.0, 0.0, "")}[mode]


def issue11_table(med):
    lines = ["| model | mode | expected extra MB | step extra MB | Δ step vs SGD | run extra MB | "
             "Δ run vs SGD | peak RSS MB | peak / SGD |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model_name in ("mlp", "cnn", "tiny"):
        sgd = med.get((model_name, "plain"))
        if not sgd:
            continue
        for mode in ("plain", "rm3", "ra3", "m3", "m3_inbatch", "winsorize"):
            r = med.get((model_name, mode))
            if not r:
                continue
            state, transient, note = expected_mb(mode, r["params"], r["batch"])
            expected = f"{state + transient:.1f} ({note})" if note else "0"
            name = {"plain": "SGD", "rm3": "RM3", "ra3": "RA3", "m3": "M3 consecutive",
                    "m3_inbatch": "M3 in-batch", "winsorize": f"winsorize c={WINSORIZE_PCT:g}"}[mode]
            lines.append(
                f"| {LABELS[model_name]} (P = {r['params']:,}) | {name} | {expected} | "
                f"{r['step_extra_mb']:.1f} | {r['step_extra_mb'] - sgd['step_extra_mb']:+.1f} | "
                f"{r['run_extra_mb']:.1f} | {r['run_extra_mb'] - sgd['run_extra_mb']:+.1f} | "
                f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / sgd['peak_rss_mb']:.3f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("MODE", "MODEL"),
                        help=f"measure one configuration in this process; MODE in {MODES}, "
                             f"MODEL in {MODEL_NAMES}")
    parser.add_argument("--worker", help="internal: model:mode,... measured in forked children")
    parser.add_argument("--model", help="with --one: the model (overrides MODEL, e.g. tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="measured steps (multiple of 3)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per configuration")
    parser.add_argument("--fresh", action="store_true",
                        help="a new interpreter per configuration instead of forked children")
    parser.add_argument("--malloc-default", action="store_true",
                        help="do not set MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ in the children")
    parser.add_argument("--json", help="also write every process's raw result to this file")
    parser.add_argument("--models", default="mlp,cnn,transformer,resnet", help="comma-separated subset")
    args = parser.parse_args(argv)

    if args.one:
        mode, model_name = args.one
        model_name = args.model or model_name
        if mode not in MODES or model_name not in MODEL_NAMES:
            parser.error(f"--one MODE MODEL: MODE in {MODES}, MODEL in {MODEL_NAMES}")
        print_result(measure(mode, model_name, args.steps, args.warmup))
        return
    if args.worker:
        worker([tuple(c.split(":")) for c in args.worker.split(",")], args.steps, args.warmup,
               args.timeout)
        return

    models = args.models.split(",")
    configs = [c for c in CONFIGS if c[0] in models]
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"median of {args.repeats} processes per configuration, {args.warmup} warm-up + "
          f"{args.steps} measured steps, {'fresh interpreters' if args.fresh else 'forked children'}, "
          f"{'default malloc' if args.malloc_default else 'MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072'}",
          flush=True)
    start, results = time.time(), []
    for repeat in range(args.repeats):
        order = configs[repeat % len(configs):] + configs[:repeat % len(configs)]  # rotate
        results += run_configs(order, args)
        print(f"# repeat {repeat + 1}: {len(results)} results, {time.time() - start:.0f} s", flush=True)
    med = median_results(results)
    print("\nIssue 10: `cgh_tf.Model(coherence_every=1)` step vs a plain Keras step (SGD)\n")
    print("\n".join(issue10_table(med)))
    print("\nIssue 11: each mode vs plain SGD (keras.Model + SGD); k = 3\n")
    print("\n".join(issue11_table(med)))
    print("\n# spread over repeats (max − min, MB) of step extra / run extra: "
          + ", ".join(f"{m}/{mode} {r['step_spread_mb']:.1f}/{r['run_spread_mb']:.1f}"
                      for (m, mode), r in sorted(med.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    hwm = {r["hwm"] for r in med.values()}
    print(f"\n# peak counter: {', '.join(sorted(hwm))}; total {time.time() - start:.0f} s; "
          "seconds per measured step (median): "
          + ", ".join(f"{m}/{mode} {r['step_s']:.3f}" for (m, mode), r in sorted(med.items())))


if __name__ == "__main__":
    main()
