"""Depth / width vs m-coherence (`python -m trainers.reproduce --experiment=depth_width`).

Base config of every run of `trainers/depth_width.py`: an MLP of `depth` hidden layers of `width`
ReLU units, trained with Adam on real labels (`labels="real"`) for a fixed budget of `epochs`
epochs, or on 100 % uniformly random labels (`labels="random"`, Zhang et al. 2017) for
`random_epochs` epochs (enough for the coherence after one epoch). The exact per-example
m-coherence of one fixed sample of `coherence_samples` training examples (the same examples for
every run; their training labels) is measured at the epochs of `coherence_epochs` (0 = at
initialisation).

The sweep is a *cross*, not a full grid: a width sweep `widths` at depth `fixed_depth` and a depth
sweep `depths` at width `fixed_width` (their common model is run once). Sweep fields (`widths`,
`depths`, `fixed_depth`, `fixed_width`) are read by `arms()` and are not part of a run's config.

Scales (`SCALES`): `small` (default): the cross of widths 32, 64, ..., 2048 at depth 1 and
depths 1..6 at width 256 (12 models × real / random labels) on MNIST-1D, 40 epochs on real labels
(`--set=dataset=mnist5k`: the 4,000 real 28×28 digits, 10 epochs); `full`: both datasets, the whole
7 × 6 grid, 60 / 40 epochs. Per-dataset settings: `DATASET_CHANGES`. MNIST-1D is the default
because its gap varies over 0.07..0.38 across the sweep, while on mnist5k it stays within
0.044..0.065 (seed sd ~0.005-0.01), too narrow a range to correlate with anything.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        labels="real",            # "real" or "random" (100 % uniform random training labels)
        data_seed=0,              # the random labels and the coherence sample (same for every seed)
        seed=0,                   # weights and batch order
        width=256,
        depth=2,                  # hidden layers
        learning_rate=1e-3,       # Adam
        batch_size=128,
        epochs=40,                # fixed training budget on real labels (mnist5k: 10)
        random_epochs=1,          # epochs on random labels (the coherence after one epoch)
        log_epochs=(0, 1, 2, 5, 10, 20, 30, 40, 60),  # also the last epoch; later ones are dropped
        coherence_epochs=(0, 1),  # epochs (among the logged ones) with the exact m-coherence
        coherence_samples=256,    # m, the same for every run
        max_train=None,           # None: the whole training split (tests use a few examples)
        checkpoint_every_logs=1,
        # the sweep (read by arms(), not part of a run's config)
        widths=(32, 64, 128, 256, 512, 1024, 2048),
        fixed_depth=1,
        depths=(1, 2, 3, 4, 5, 6),
        fixed_width=256,
        grid=False,               # True: every (depth, width) pair instead of the cross
    ))


SWEEP_FIELDS = ("widths", "fixed_depth", "depths", "fixed_width", "grid")

# The datasets a scale runs by default; `--set=dataset=NAME` runs only NAME (one of them).
DATASETS = {"small": ("mnist1d",), "full": ("mnist1d", "mnist5k")}
SCALES = {
    "small": {},
    "full": {"grid": True},
}
# Per scale and dataset: changes applied after the scale's and before `--set` overrides.
DATASET_CHANGES = {
    "small": {"mnist1d": {}, "mnist5k": {"epochs": 10}},
    "full": {"mnist1d": {"epochs": 60}, "mnist5k": {"epochs": 40}},
}
