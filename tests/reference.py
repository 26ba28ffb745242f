"""Float64 NumPy references shared by the tests: softmax regression with closed-form gradients.

For logits z = x W + b and cross-entropy ℓ = −log softmax(z)_y, the per-example gradients are
∇_W ℓ_i = x_i ⊗ (p_i − e_{y_i}) and ∇_b ℓ_i = p_i − e_{y_i}, with p_i = softmax(z_i).
"""

import numpy as np


def softmax(z):
    """Row-wise softmax of [m, c] logits, float64."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_example_gradients(w, b, x, y):
    """Per-example gradients of softmax regression.

    Args:
      w: [d, c] kernel; b: [c] bias; x: [m, d] inputs; y: [m] int labels.
    Returns:
      (gw [m, d, c], gb [m, c]) float64.
    """
    delta = softmax(x @ w + b)
    delta[np.arange(len(y)), y] -= 1.0
    return np.einsum("md,mc->mdc", x, delta), delta


def mean_gradient(w, b, x, y):
    """Mean gradient over the batch: (gw [d, c], gb [c])."""
    gw, gb = per_example_gradients(w, b, x, y)
    return gw.mean(axis=0), gb.mean(axis=0)


def m_coherence(per_example_flat):
    """‖Σ g_i‖² / Σ ‖g_i‖² for [m, p] flattened per-example gradients."""
    total = per_example_flat.sum(axis=0)
    return float(total @ total / np.sum(per_example_flat ** 2))


def problem(m=60, d=5, c=4, seed=0):
    """A random softmax-regression problem: x [m, d], y [m], w0 [d, c], b0 [c] (float64)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d))
    y = rng.integers(0, c, size=m)
    w0 = 0.3 * rng.normal(size=(d, c))
    b0 = 0.1 * rng.normal(size=c)
    return x, y, w0, b0
