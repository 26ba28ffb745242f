"""Modular-arithmetic data sets for grokking (Power et al. 2022, arXiv 2201.02177), generated here.

Every pair (a, b) with a, b in [0, p) is one example; its label is `a ∘ b mod p`. The p² pairs are
shuffled with `np.random.default_rng(seed)` and the first `round(train_fraction · p²)` are the
training set, the rest the test set (Power et al.; Nanda et al. 2023 use p = 113 and 30 %).

| operation    | label                    |
|--------------|--------------------------|
| `"add"`      | (a + b) mod p            |
| `"subtract"` | (a − b) mod p            |
| `"multiply"` | (a · b) mod p            |

Two input encodings of the same pairs (`encoding=`):

| encoding   | x (one example)                                        | model                       |
|------------|--------------------------------------------------------|-----------------------------|
| `"tokens"` | int32 [3]: (a, p + b, 2p), vocabulary 2p + 1            | Transformer (Embedding)      |
| `"onehot"` | float32 [2p]: one-hot(a) ‖ one-hot(b)                   | MLP                         |

In `"tokens"` the two operands use disjoint token ranges and the last token is the "=" token whose
output predicts the answer, so a single Embedding carries both the value and the position.
"""

import numpy as np

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "subtract": lambda a, b, p: (a - b) % p,
    "multiply": lambda a, b, p: (a * b) % p,
}
ENCODINGS = ("tokens", "onehot")


def vocabulary_size(p: int) -> int:
    """Number of tokens of the `"tokens"` encoding: p values of a, p of b, and "="."""
    return 2 * p + 1


def encode(a, b, p: int, encoding: str) -> np.ndarray:
    """Inputs for operand arrays a, b (see the module table)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if encoding == "tokens":
        return np.stack([a, p + b, np.full_like(a, 2 * p)], axis=1).astype(np.int32)
    if encoding == "onehot":
        x = np.zeros((len(a), 2 * p), np.float32)
        x[np.arange(len(a)), a] = 1.0
        x[np.arange(len(a)), p + b] = 1.0
        return x
    raise ValueError(f"encoding={encoding!r} is unknown; allowed: {', '.join(ENCODINGS)}")


def make(p: int = 97, operation: str = "add", train_fraction: float = 0.5, seed: int = 0,
         encoding: str = "tokens") -> dict:
    """{"x_train", "y_train", "x_test", "y_test", "num_classes", "pairs_train", "pairs_test"}.

    pairs_*: int64 [n, 2] operands (a, b) of each example. Deterministic in `seed`.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation={operation!r} is unknown; allowed: {', '.join(OPERATIONS)}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    p = int(p)
    if p < 2:
        raise ValueError(f"p must be >= 2, got {p}")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64)
    pairs = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    labels = OPERATIONS[operation](pairs[:, 0], pairs[:, 1], p).astype(np.int32)
    n_train = int(round(float(train_fraction) * len(pairs)))
    x = encode(pairs[:, 0], pairs[:, 1], p, encoding)
    return {"x_train": x[:n_train], "y_train": labels[:n_train], "x_test": x[n_train:],
            "y_test": labels[n_train:], "num_classes": p, "pairs_train": pairs[:n_train],
            "pairs_test": pairs[n_train:]}
