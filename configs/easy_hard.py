"""Easy vs hard examples with their controls (arXiv 2003.07422; issue 24;
`python -m trainers.reproduce --experiment=easy_hard`; `trainers/easy_hard.py`).

One run per part and seed. A probe (the seeded MLP trained `probe_epochs` epochs with plain SGD
on the whole clean training set) calls an example easy if it then classifies it correctly. Easy
and hard are each split `test_fraction` / rest into a test and a training part; the random
control parts are a random partition of the same training pool (and of the same test pool) into
parts of exactly the easy and the hard sizes. A fresh model with the probe's initial weights is
trained on one part (`part`, set per arm) for `epochs` epochs and tested on every test part.

Scales (`SCALES`): `small` (default; MNIST-1D and mnist5k, 30 epochs) and `full` (the same,
100 epochs); `--set=dataset=NAME` runs one dataset.
"""

import ml_collections

PARTS = ("easy", "hard", "random_easy_size", "random_hard_size")


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        part="easy",             # set per arm: one of PARTS
        seed=0,                  # initial weights, probe, splits and batch order
        width=256,
        depth=2,                 # hidden layers
        learning_rate=0.1,       # plain SGD, no momentum (probe and part runs)
        batch_size=64,
        probe_epochs=2,
        test_fraction=0.5,       # share of each part held out as its test part
        epochs=30,
        log_epochs=(0, 1, 2, 5, 10, 20, 30, 50, 100),
        coherence_samples=1024,  # at most this many training examples of the part, at init
        checkpoint_every_logs=1,
    ))


DATASETS = {"small": ("mnist1d", "mnist5k"), "full": ("mnist1d", "mnist5k")}
SCALES = {"small": {}, "full": {"epochs": 100}}
DATASET_CHANGES = {"small": {"mnist1d": {}, "mnist5k": {}},
                   "full": {"mnist1d": {}, "mnist5k": {}}}
