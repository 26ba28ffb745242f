"""Easy vs hard examples (arXiv 2003.07422) on MNIST-1D: train briefly, split, train on each part.

`mode = "easy_hard"` makes `trainers/train.py` run `train_easy_hard`:

| step | what                                                                       | workdir            |
|------|----------------------------------------------------------------------------|--------------------|
| 1    | probe: the config trained for `easy_hard.probe_epochs` = 2 epochs; a training example is "easy" if the probe classifies it correctly | `WORKDIR/probe` |
| 2    | easy / hard datasets, each split 50 / 50 into its own train and test (seeded) | `WORKDIR/easy_hard_split.csv` |
| 3    | a fresh MLP trained from scratch on each part for `num_epochs` = 60       | `WORKDIR/easy`, `WORKDIR/hard` |

`results.json` reports each part's test accuracy on its own test split (`final.easy_test_accuracy`,
`final.hard_test_accuracy`): easy examples generalise better among themselves. Labels are clean
(`label_noise = 0`). To define "easy" from the learning times of an earlier run instead of a probe,
pass `--config.easy_hard.learning_times_csv=RUN/learning_times.csv` (a run of the same data with
`learning_times.every_steps > 0`; its last evaluation defines easy).

    python -m trainers.train --config=configs/easy_hard.py --workdir=/tmp/easy_hard
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the MNIST-1D easy / hard config."""
    config = default.get_config()
    config.mode = "easy_hard"
    config.label_noise = 0.0
    config.easy_hard.probe_epochs = 2
    config.easy_hard.test_fraction = 0.5
    config.num_epochs = 60
    return config
