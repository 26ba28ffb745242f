"""Model-wise and epoch-wise double descent (`python -m trainers.reproduce --experiment=double_descent`).

Base config of every run of `trainers/double_descent.py`: an MLP of one hidden layer of `width`
ReLU units on MNIST-1D with 15 % label noise (Nakkiran et al. 2019, arXiv 1912.02292: 10-20 %
noise, Adam, no weight decay, no early stopping), one run per width and seed. Every run logs at
the epochs of `log_epochs` (test error, pristine / corrupted train accuracy, m-coherence of fixed
pristine and corrupted training samples, f^p of a fixed mixed training sample), so the same runs
give the model-wise curve (last epoch vs width) and the epoch-wise curves (per width vs epoch).

Scales (`SCALES`): `small` (default; MNIST-1D, 11 widths 2..2048, 150 epochs; with
`--set=dataset=mnist5k`: the 4,000 real 28×28 training digits of `mnist5k`, 11 widths 1..1024,
150 epochs) and `full` (MNIST-1D and mnist5k, 14 / 16 widths, 1000 epochs). Per-dataset settings:
`WIDTHS`, `DATASET_CHANGES`.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        label_noise=0.15,
        noise_kind="other",      # every selected label really changes: corrupted share = 15 %
        data_seed=0,             # which labels are corrupted (the same for every seed)
        seed=0,                  # weights and batch order
        width=64,
        depth=1,                 # hidden layers
        learning_rate=1e-3,      # Adam
        batch_size=128,
        epochs=150,
        log_epochs=(0, 1, 2, 3, 5, 8, 12, 20, 30, 50, 75, 100, 150),
        coherence_samples=256,   # m of the pristine and of the corrupted sample
        fraction_samples=512,    # mixed training sample for f^p
        checkpoint_every_logs=1,
    ))


WIDTHS = {  # scale -> dataset -> hidden widths of the sweep
    "small": {"mnist1d": (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
              "mnist5k": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)},
    "full": {"mnist1d": (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024),
             "mnist5k": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)},
}
# The datasets a scale runs by default; `--set=dataset=NAME` runs only NAME (one of WIDTHS[scale]).
DATASETS = {"small": ("mnist1d",), "full": ("mnist1d", "mnist5k")}
SCALES = {
    "small": {},
    "full": {"epochs": 1000, "log_epochs": (0, 1, 2, 3, 5, 8, 12, 20, 30, 50, 75, 100, 150, 200,
                                             300, 500, 750, 1000)},
}
# Per scale and dataset: changes applied after the scale's and before `--set` overrides.
DATASET_CHANGES = {
    "small": {"mnist1d": {}, "mnist5k": {}},
    "full": {"mnist1d": {}, "mnist5k": {}},
}
