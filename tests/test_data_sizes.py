"""Larger generated MNIST-1D training sets: `cgh_tf.data.load("mnist1d", train_size=n)`."""

import hashlib
import os
import shutil

import numpy as np
import pytest

from cgh_tf import data

# sha256 of (train x, y, original_y, corrupted, example_id, test x, y) of the default load, computed
# with the data.py of the commit before train_size existed (git show HEAD:cgh_tf/data.py).
DEFAULT_SHA256 = {
    (): "a17ec17bc52a38a8a2431d4398a681c2c0bd888d83c242135dc2cb57596b4070",
    (("label_noise", 0.5), ("noise_kind", "other"), ("seed", 3)):
        "3c8b82f1b8129b6a323efa8a9ce738e6de4121f74e4cd87f4fc7d6e7522195db",
}


def _sha(ds):
    h = hashlib.sha256()
    for a in (ds.train.x, ds.train.y, ds.train.original_y, ds.train.corrupted,
              ds.train.example_id, ds.test.x, ds.test.y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def default_cache(tmp_path_factory):
    """A private cache dir holding the default mnist1d file (copied from the user cache when there,
    else generated once)."""
    directory = str(tmp_path_factory.mktemp("sizes_cache"))
    user = os.path.join(data.cache_dir(), data._MNIST1D_CACHE_FILE)
    if os.path.exists(user):
        shutil.copy(user, os.path.join(directory, data._MNIST1D_CACHE_FILE))
    else:
        data._mnist1d_arrays(directory)
    return directory


def _generated_path(directory, n):
    return os.path.join(directory, data._MNIST1D_TRAIN_CACHE_FILE.format(
        n=n, seed=data._MNIST1D_TRAIN_SEED))


def test_generated_set_has_the_size_valid_labels_and_the_default_test_set(default_cache):
    ds = data.load("mnist1d", train_size=300, data_dir=default_cache)
    default = data.load("mnist1d", data_dir=default_cache)
    assert ds.train.x.shape == (300, 40) and ds.train.x.dtype == np.float32
    assert ds.train.y.shape == (300,)
    assert np.array_equal(np.bincount(ds.train.y, minlength=10), np.full(10, 30))  # n/10 per class
    assert ds.num_classes == 10 and ds.input_shape == (40,)
    np.testing.assert_array_equal(ds.test.x, default.test.x)  # the test set is fixed
    np.testing.assert_array_equal(ds.test.y, default.test.y)
    # a new set: no training example of it is one of the default set (train or test)
    pool = np.concatenate([default.train.x, default.test.x])
    assert not np.isclose(ds.train.x[:, None, :], pool[None, :, :], atol=1e-6).all(-1).any()
    # standardised by its own statistics, like the default set
    assert abs(float(ds.train.x.mean())) < 1e-4 and abs(float(ds.train.x.std()) - 1) < 1e-4
    # label noise and limits apply to it as to any training set
    noisy = data.load("mnist1d", train_size=300, data_dir=default_cache, label_noise=0.5,
                      noise_kind="other", seed=1, max_train=200, max_test=50)
    assert len(noisy.train) == 200 and len(noisy.test) == 50
    assert int(noisy.train.corrupted.sum()) == 100
    np.testing.assert_array_equal(noisy.train.original_y, ds.train.y[:200])


def test_generated_set_is_deterministic_and_cached(default_cache, tmp_path, monkeypatch):
    path = _generated_path(default_cache, 200)
    first = data.load("mnist1d", train_size=200, data_dir=default_cache)
    assert os.path.exists(path)
    assert not [f for f in os.listdir(default_cache) if f.startswith(".tmp")]  # atomic write
    # generated afresh elsewhere: the same bytes
    fresh = data._generate_mnist1d_train(200)
    np.testing.assert_array_equal(fresh["x"], first.train.x)
    np.testing.assert_array_equal(fresh["y"], first.train.y)
    # a second load reads the cache (the generator is not called)
    monkeypatch.setattr(data, "_generate_mnist1d_train",
                        lambda n: (_ for _ in ()).throw(AssertionError("regenerated")))
    again = data.load("mnist1d", train_size=200, data_dir=default_cache)
    np.testing.assert_array_equal(again.train.x, first.train.x)
    # the cached file is what is read: a marker written into it comes back
    with np.load(path) as cached:
        arrays = {k: cached[k].copy() for k in cached.files}
    arrays["x"][0, 0] = 1234.0
    data._atomic_save_npz(path, arrays)
    assert data.load("mnist1d", train_size=200, data_dir=default_cache).train.x[0, 0] == 1234.0
    # a size of another n is another file; a broken file is regenerated
    monkeypatch.undo()
    with open(path, "wb") as f:
        f.write(b"not an npz")
    np.testing.assert_array_equal(
        data.load("mnist1d", train_size=200, data_dir=default_cache).train.x, fresh["x"])


def test_generation_leaves_the_global_rng_alone():
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    data._generate_mnist1d_train(100)
    assert np.random.random() == expected


@pytest.mark.parametrize("kwargs", [{}, {"label_noise": 0.5, "noise_kind": "other", "seed": 3}])
def test_default_load_is_byte_identical(default_cache, kwargs):
    ds = data.load("mnist1d", data_dir=default_cache, **kwargs)
    assert _sha(ds) == DEFAULT_SHA256[tuple(sorted(kwargs.items()))]
    assert ds.train.x.shape == (4000, 40)
    with np.load(os.path.join(default_cache, data._MNIST1D_CACHE_FILE)) as cached:
        np.testing.assert_array_equal(ds.train.x, cached["x"])
    # train_size=None never touches a generated file
    assert not [f for f in os.listdir(default_cache) if f.startswith("mnist1d_train4000")]


@pytest.mark.parametrize("name, size, message", [
    ("mnist1d", 205, "multiple of 10"),
    ("mnist1d", 0, "multiple of 10"),
    ("mnist1d", True, "multiple of 10"),
    ("mnist1d", 100.0, "multiple of 10"),
    ("mnist5k", 1000, "mnist1d only"),
])
def test_bad_train_size_is_rejected_before_any_generation(name, size, message, monkeypatch,
                                                          tmp_path):
    monkeypatch.setattr(data, "_generate_mnist1d_train",
                        lambda n: (_ for _ in ()).throw(AssertionError("generated")))
    with pytest.raises(ValueError, match=message):
        data.load(name, train_size=size, data_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
