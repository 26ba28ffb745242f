"""Adversarial initialisation by random-label pretraining (`python -m trainers.reproduce
--experiment=adversarial_init`).

Base config of every phase-2 run of `trainers/adversarial_init.py` (Liu et al. 2019, "Bad Global
Minima Exist and SGD Can Reach Them", arXiv 1906.02613). Phase 1 (shared by every phase-2 arm of
a seed): an MLP (`depth` × `width` ReLU) trained with Adam (`phase1_learning_rate`,
`phase1_batch_size`) on the training set with 100 % random labels until its accuracy on those
labels is ≥ `phase1_target` (checked after every epoch) or `phase1_max_epochs` epochs. Phase 2:
`start` = "adversarial" (phase 1's final weights) or "fresh" (the very weights phase 1 started
from), trained on the real labels with `optimizer` (plain SGD, no momentum, no weight decay, the
authors' setting for M3 / RM3; a fresh optimizer state in both starts) for `epochs` epochs.

Scales (`SCALES`): `small` (default; `DATASETS["small"]`, 30 phase-2 epochs) and `full` (both
datasets, 100 phase-2 epochs, larger phase-1 budget). Per-dataset settings: `DATASET_CHANGES`.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        max_train=None,          # first examples of each split (None: all; tests use few)
        max_test=None,
        data_seed=0,             # random labels of seed k: data.load(seed=data_seed + k)
        seed=0,                  # initial weights and batch order (phase 1 and 2)
        width=256,
        depth=2,                 # hidden layers
        # phase 1: random labels (shared by the phase-2 arms of a seed)
        phase1_learning_rate=1e-3,   # Adam
        phase1_batch_size=128,
        phase1_target=0.99,          # stop once train acc on the random labels >= this ...
        phase1_max_epochs=150,       # ... or after this many epochs
        phase1_checkpoint_every=10,  # epochs
        # phase 2: real labels
        start="adversarial",     # "adversarial" (phase-1 weights) or "fresh" (phase-1 init)
        optimizer="sgd",         # "sgd", "m3", "rm3", "ra3" (all over plain SGD)
        learning_rate=0.05,
        batch_size=64,           # per mini-batch (M3: per group; its control: sgd, 3x batch)
        epochs=30,
        log_epochs=(0, 1, 2, 3, 5, 8, 12, 16, 20, 25, 30, 40, 50, 60, 80, 100),
        compare_train_acc=0.75,  # summary: test acc at the first log with train acc >= this
        coherence_samples=256,   # m of the fixed real-label training sample
        checkpoint_every_logs=2,
    ))


# The datasets a scale runs by default; `--set=dataset=NAME` runs only NAME.
DATASETS = {"small": ("mnist1d",), "full": ("mnist1d", "mnist5k")}
SCALES = {
    "small": {},
    "full": {"epochs": 100, "phase1_max_epochs": 400},
}
# Per scale and dataset: changes applied after the scale's and before `--set` overrides.
DATASET_CHANGES = {
    "small": {"mnist1d": {}, "mnist5k": {"width": 128}},
    "full": {"mnist1d": {}, "mnist5k": {}},
}
