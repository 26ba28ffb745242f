"""Cost of m-coherence inside a train step, relative to a plain SGD train step.

Usage: python benchmarks/coherence.py [--batch 128] [--steps 10] [--jit] [--models mlp,cnn]
       [--variants plain,fast,vmap,jacobian,jax]

For an MLP (784-512-512-10) and a small CNN (28×28×1: Conv 3×3×32, Conv 3×3×64, MaxPool 2,
Dense 128, Dense 10), at batch 128, all in one process:

| variant   | what the step computes |
|-----------|------------------------|
| plain     | tape.gradient of the mean loss + SGD apply |
| fast      | `per_example.gradients_and_sq_norms` (one backward pass) → update + m-coherence |
| vmap      | per-example gradients by tf.vectorized_map → update + m-coherence |
| jacobian  | tape.jacobian of the [m] losses → update + m-coherence |
| jax vmap  | jax.vmap(jax.grad) per-example gradients + SGD update, jitted (if `import jax` works) |

Time: median wall time of `--steps` steps after two warm-up steps, plain and fast interleaved step by
step (vmap / jacobian: `--steps`/5 steps) (tf.function; `--jit` adds
jit_compile=True). Memory: peak process RSS sampled every 2 ms during a timed step, minus the RSS
before it (max over steps) (CPU; approximate, and an allocator may reuse memory freed by an earlier variant, so
variants run in order of expected memory). `per-ex MB` is the analytic size of materialised
per-example gradients (m × parameters × 4 bytes), the dominant extra allocation of vmap / jacobian.
"""

import argparse
import os
import platform
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cgh_tf import exact_fallback, per_example  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp():
    L = keras.layers
    return keras.Sequential([keras.Input((784,)), L.Dense(512, activation="relu"),
                             L.Dense(512, activation="relu"), L.Dense(10)], name="mlp")


def small_cnn():
    L = keras.layers
    return keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"),
                             L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2), L.Flatten(),
                             L.Dense(128, activation="relu"), L.Dense(10)], name="cnn")


class PeakRss:
    """Samples the process RSS in a thread; `peak_mb` is the peak above the starting RSS."""

    def __enter__(self):
        self._process, self._running = psutil.Process(), True
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()

    @property
    def peak_mb(self):
        return (self.peak - self.start) / 2**20


def m_coherence(grad_sum, sq_norms):
    s2 = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grad_sum if g is not None])
    return s2 / tf.reduce_sum(sq_norms)


def train_steps(model, optimizer, jit):
    variables = model.trainable_variables
    loss_fn = per_example.per_example_loss_fn(model, LOSS)

    def apply(grad_sum, m):
        optimizer.apply([g / tf.cast(m, g.dtype) for g in grad_sum], variables)

    def plain(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def fast(x, y):
        sums = per_example.gradients_and_sq_norms(model, x, y, loss_fn)
        apply(sums.grad_sum, tf.shape(y)[0])
        return m_coherence(sums.grad_sum, sums.sq_norms)

    def materialised(grads, m):
        grad_sum = [tf.reduce_sum(g, 0) for g in grads]
        sq_norms = tf.stack([tf.reduce_sum(tf.reshape(tf.square(g), [m, -1]), 1) for g in grads], 1)
        apply(grad_sum, m)
        return m_coherence(grad_sum, sq_norms)

    def vmap(x, y):
        return materialised(exact_fallback.per_example_gradients(model, x, y, loss_fn, variables, method="vmap"), tf.shape(y)[0])

    def jacobian(x, y):
        with tf.GradientTape() as tape:
            losses = loss_fn(y, model(x, training=False))
        return materialised(tape.jacobian(losses, variables), tf.shape(y)[0])

    compile_ = lambda f: tf.function(f, jit_compile=jit)  # noqa: E731
    return {"plain": compile_(plain), "fast": compile_(fast), "vmap": compile_(vmap),
            "jacobian": compile_(jacobian)}


def time_interleaved(named_steps, x, y, rounds):
    """{name: (median seconds, peak ΔRSS MB)}; one step of each variant per round, so that load
    from other processes on a shared machine hits all variants alike."""
    for step in named_steps.values():
        for _ in range(2):
            float(step(x, y))
    times = {name: [] for name in named_steps}
    peaks = {name: 0.0 for name in named_steps}
    for _ in range(rounds):
        for name, step in named_steps.items():
            with PeakRss() as rss:
                start = time.perf_counter()
                float(step(x, y))
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], rss.peak_mb)
    return {name: (statistics.median(times[name]), peaks[name]) for name in named_steps}


def jax_step_time(model_name, batch, steps):
    """Median time of a jitted JAX step: vmap(grad) per-example gradients, m-coherence, SGD."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    key = jax.random.PRNGKey(0)

    def dense(key, fan_in, fan_out):
        return {"w": jax.random.normal(key, (fan_in, fan_out)) * (2 / fan_in) ** 0.5, "b": jnp.zeros(fan_out)}

    def conv(key, cin, cout):
        return {"w": jax.random.normal(key, (3, 3, cin, cout)) * (2 / (9 * cin)) ** 0.5, "b": jnp.zeros(cout)}

    keys = jax.random.split(key, 4)
    if model_name == "mlp":
        params = [dense(keys[0], 784, 512), dense(keys[1], 512, 512), dense(keys[2], 512, 10)]

        def forward(params, x):
            for layer in params[:-1]:
                x = jax.nn.relu(x @ layer["w"] + layer["b"])
            return x @ params[-1]["w"] + params[-1]["b"]

        x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 784)), jnp.float32)
    else:
        params = [conv(keys[0], 1, 32), conv(keys[1], 32, 64), dense(keys[2], 12 * 12 * 64, 128),
                  dense(keys[3], 128, 10)]

        def forward(params, x):
            for layer in params[:2]:
                x = jax.lax.conv_general_dilated(x, layer["w"], (1, 1), "VALID",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                x = jax.nn.relu(x + layer["b"])
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params[2]["w"] + params[2]["b"])
            return x @ params[3]["w"] + params[3]["b"]

        x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, batch))

    def loss(params, xi, yi):
        logits = forward(params, xi[None])[0]
        return jax.nn.logsumexp(logits) - logits[yi]

    @jax.jit
    def step(params, x, y):
        grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)
        leaves = jax.tree_util.tree_leaves(grads)
        grad_sum = [g.sum(0) for g in leaves]
        q = sum(jnp.sum(g ** 2) for g in leaves)
        r = sum(jnp.sum(g ** 2) for g in grad_sum) / q
        new = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g.mean(0), params, grads)
        return new, r

    for _ in range(2):
        params, r = step(params, x, y)
        r.block_until_ready()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, r = step(params, x, y)
        r.block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True for the TF steps")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated subset of mlp,cnn")
    parser.add_argument("--variants", default="plain,fast,vmap,jacobian,jax",
                        help="comma-separated subset of plain,fast,vmap,jacobian,jax (plain always runs)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}, Keras {keras.__version__}, batch {args.batch}, jit={args.jit}")
    print(f"{'model':5} {'variant':9} {'ms/step':>9} {'× plain':>8} {'peak ΔRSS MB':>13} {'per-ex MB':>10}")
    rng = np.random.default_rng(0)
    variants = set(args.variants.split(",")) | {"plain"}
    for build, shape in ((mlp, (784,)), (small_cnn, (28, 28, 1))):
        if build.__name__.replace("small_", "") not in args.models.split(","):
            continue
        keras.utils.set_random_seed(0)
        model = build()
        x = tf.constant(rng.normal(size=(args.batch, *shape)), tf.float32)
        y = tf.constant(rng.integers(0, 10, args.batch))
        params = sum(v.shape.num_elements() for v in model.trainable_variables)
        per_example_mb = args.batch * params * 4 / 2**20
        steps = train_steps(model, keras.optimizers.SGD(0.01), args.jit)
        cheap = {n: steps[n] for n in ("plain", "fast") if n in variants}
        results = time_interleaved(cheap, x, y, args.steps)
        for name in ("vmap", "jacobian"):
            if name in variants:
                results.update(time_interleaved({name: steps[name]}, x, y, max(2, args.steps // 5)))
        plain_time = results["plain"][0]
        for name, (seconds, peak_mb) in results.items():
            extra = f"{per_example_mb:10.0f}" if name in ("vmap", "jacobian") else f"{'':10}"
            print(f"{model.name:5} {name:9} {seconds * 1e3:9.1f} {seconds / plain_time:8.2f} {peak_mb:13.0f} {extra}")
        if "jax" not in variants:
            continue
        jax_seconds = jax_step_time(model.name, args.batch, args.steps)
        if jax_seconds is None:
            print(f"{model.name:5} jax vmap  skipped: `import jax` failed (pip install jax to compare)")
        else:
            print(f"{model.name:5} {'jax vmap':9} {jax_seconds * 1e3:9.1f} {jax_seconds / plain_time:8.2f}"
                  f" {'':13} {per_example_mb:10.0f}   (× TF plain step)")


if __name__ == "__main__":
    main()
