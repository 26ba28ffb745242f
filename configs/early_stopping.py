"""Early stopping from coherence (`python -m trainers.reproduce --experiment=early_stopping`).

Base config of every run of `trainers/early_stopping.py`: an MLP (`depth` hidden layers of `width`
ReLU units) trained with Adam on the training part of `dataset` with `label_noise` of its labels
corrupted ("other": every selected label really changes); `validation_fraction` of the (noisy)
training set is held out as a validation split with the same noise. One run per noise level of
`noise_levels` and seed. Log points (in optimizer steps): `early_logs_per_epoch` per epoch for the
first `early_epochs` epochs, then one per epoch up to `epochs`.

Stopping rules (fixed before any test result was seen; `trainers/early_stopping.py` `RULES`):
(a) `final`: the last log point; (b) `validation`: the best accuracy on the noisy validation split;
(c1) `coherence_drop`: the first log point where the m-coherence of the fixed training sample has
fallen to `coherence_drop` × its running maximum or below; (c2) `coherence_plateau`: the first log
point where it is within `plateau_fraction` of its range above its minimum over the whole run;
`oracle`: the best test accuracy (upper bound). Memorisation onset: the first log point after the
minimum of the corrupted train accuracy where it exceeds that minimum by `onset_rise`.

Scales (`SCALES`): `small` (default) and `full` (more epochs, larger m). Default dataset: see
`trainers/early_stopping.py` (why mnist5k); `--set=dataset=mnist1d` runs MNIST-1D with the
changes of `DATASET_CHANGES`.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist5k",
        noise_levels=(0.25, 0.5),  # one run per noise level (sets `label_noise`) and seed
        label_noise=0.25,
        noise_kind="other",        # every selected label really changes
        data_seed=0,               # corrupted labels, validation split, fixed samples
        seed=0,                    # weights and batch order
        max_train=None,            # first examples of the dataset's training split (None = all)
        max_test=None,
        validation_fraction=0.2,   # held out of the noisy training set (same noise)
        width=512,
        depth=1,                   # hidden layers
        optimizer="adam",          # "adam" or "sgd" (plain, no momentum)
        learning_rate=1e-3,
        batch_size=128,
        epochs=30,
        early_epochs=8,            # epochs logged densely
        early_logs_per_epoch=4,
        coherence_samples=256,     # m of the mixed training, pristine and corrupted samples
        coherence_drop=0.5,        # rule c1: m-coherence <= this × its running maximum
        plateau_fraction=0.1,      # rule c2: m-coherence <= min + this × (max − min)
        onset_rise=0.05,           # memorisation onset: corrupted acc >= its minimum + this
        checkpoint_every_logs=5,
    ))


# The datasets a scale runs by default; `--set=dataset=NAME` runs only NAME.
DATASETS = {"small": ("mnist5k",), "full": ("mnist5k", "mnist1d")}
SCALES = {
    "small": {},
    "full": {"epochs": 150, "early_epochs": 20, "coherence_samples": 512},
}
# Per scale and dataset: changes applied after the scale's and before `--set` overrides.
DATASET_CHANGES = {
    "small": {"mnist5k": {}, "mnist1d": {"epochs": 100}, "digits": {}},  # MNIST-1D memorises slower
    "full": {"mnist5k": {}, "mnist1d": {}, "digits": {}},
}
