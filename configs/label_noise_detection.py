"""Can per-example alignment find the mislabelled examples? (beyond the papers;
`python -m trainers.reproduce --experiment=label_noise_detection`; `trainers/label_noise_detection.py`).

One run per dataset, noise level and seed: `label_noise` of the training labels corrupted
("other": each chosen label replaced by one of the other classes, uniformly, so exactly that share
is wrong; which examples: `data_seed` = the run's seed), the MLP trained with plain SGD for
`epochs` epochs. At each of `score_epochs` (0 = initialisation) every training example is scored
by −a_i (its alignment over the whole noisy training set, `cgh_tf.coherence.alignment`), by its
loss (the small-loss rule) and, from epoch 2, by its forgetting count over the epochs so far; each
score's AUROC for the corrupted examples, and the precision of flagging the `label_noise` share
with the highest score (the small-loss rule's own threshold).

Scale: `small` only (MNIST-1D and mnist5k, 20 % and 40 % noise, 5 epochs; the table's columns
are those score epochs); `--set=dataset=NAME`, `--set=label_noise=P` run one of each.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        label_noise=0.2,         # set per arm from NOISE_LEVELS
        noise_kind="other",
        data_seed=0,             # which labels are corrupted: set to the seed per arm
        seed=0,                  # weights and batch order
        width=256,
        depth=2,                 # hidden layers
        learning_rate=0.1,       # plain SGD, no momentum
        batch_size=64,
        epochs=5,
        score_epochs=(0, 1, 5),  # epochs at which every example is scored (0 = initialisation)
        alignment_batch=1000,    # examples per batch of the alignment passes
        null_permutations=20,    # permutations of the corrupted mask averaged for the null AUROC
        checkpoint_every_logs=1,
    ))


NOISE_LEVELS = (0.2, 0.4)
DATASETS = {"small": ("mnist1d", "mnist5k")}
SCALES = {"small": {}}
DATASET_CHANGES = {"small": {"mnist1d": {}, "mnist5k": {}}}
