"""Pristine share of the early loss reduction against its right null (`python -m
trainers.reproduce --experiment=loss_fractions`; replaces the sweep of the same name, issue 24).

Base config of every run of `trainers/loss_fractions.py`: `scale`'s setting (`configs/scale.py`:
MLP 2 × 256 ReLU, plain SGD lr 0.2, batch 64) on n = 4,000 MNIST-1D examples with `label_noise`
of "uniform" noise (set per arm from `NOISE_LEVELS`: at 10 classes it changes only 0.9·p of the
labels). On a fixed mixed training sample of `fraction_samples` examples it logs f^p, its
gradient-blind null Q_p/Q and the count share at every step 0..`every_step_until`, then at every
epoch end. `early_window` = (first, last) step, inclusive: the declared window of the rule.

Scale `small` (the only one): MNIST-1D and mnist5k (its 4,000 real training digits); one of them
with `--set=dataset=NAME`.
"""

from configs import scale


def get_config():
    config = scale.get_config()
    config.train_size = 4000
    config.label_noise = 0.25      # set per arm
    config.epochs = 10
    config.every_step_until = 60   # log every step 0..60, then every epoch end
    config.early_window = (0, 20)  # steps (inclusive) averaged by the declared rule
    config.fraction_samples = 512  # m of the fixed mixed training sample
    del config["arm"], config["optimizer"], config["aggregation"], config["winsorize_pct"]
    del config["log_epochs"]
    return config


NOISE_LEVELS = (0.25, 0.5)
DATASETS = {"small": ("mnist1d", "mnist5k")}
SCALES = {"small": {}}
DATASET_CHANGES = {"small": {"mnist1d": {}, "mnist5k": {}}}
