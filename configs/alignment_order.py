"""Is an example's alignment at initialisation the order in which it is learnt?
(`python -m trainers.reproduce --experiment=alignment_order`; `trainers/alignment_order.py`).

One run per dataset and seed: the MLP (`depth` × `width` ReLU) at its seeded initialisation gives
every training example its alignment a_i = g_i·(S − g_i)/‖g_i‖² over the whole training set
(`cgh_tf.coherence.alignment`, m = n) and its loss ℓ_i; it is then trained with plain SGD for
`epochs` epochs and every example's correctness (argmax vs its training label, inference mode) is
recorded after every epoch, giving its learning epoch (first epoch from which it stays correct).

Scales (`SCALES`): `small` (default; MNIST-1D and mnist5k, 30 epochs) and `full` (the same,
100 epochs); `--set=dataset=NAME` runs one dataset.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        seed=0,                  # weights and batch order
        width=256,
        depth=2,                 # hidden layers
        learning_rate=0.05,      # plain SGD, no momentum
        batch_size=64,
        epochs=30,
        alignment_batch=1000,    # examples per batch of the alignment passes
        null_permutations=20,    # permutations of the learning epochs averaged for the null
        checkpoint_every_logs=5,
    ))


DATASETS = {"small": ("mnist1d", "mnist5k"), "full": ("mnist1d", "mnist5k")}
SCALES = {"small": {}, "full": {"epochs": 100}}
DATASET_CHANGES = {"small": {"mnist1d": {}, "mnist5k": {}},
                   "full": {"mnist1d": {}, "mnist5k": {}}}
