"""Default experiment: MNIST-1D with 50 % label noise, an MLP, plain SGD (a few minutes on 2 CPU cores).

Fields (every one can be overridden by flag, e.g. `--config.optimizer.name=rm3`):

| field                        | meaning                                                                 |
|------------------------------|-------------------------------------------------------------------------|
| `dataset`, `data_dir`        | a name in `cgh_tf.data.DATASETS`; tfds data dir (None: tfds default)      |
| `label_noise`, `noise_kind`  | fraction in [0, 1] of training labels replaced; "uniform"/"other"/"permute"|
| `input_corruption`           | None or "shuffled_pixels" / "random_pixels" / "gaussian"                |
| `max_train`, `max_test`      | keep only the first n examples of a split (None: all)                   |
| `model.name`, `model.kwargs` | `cgh_tf.models.build(name, input_shape, num_classes, **kwargs)`          |
| `optimizer.*`                | `cgh_tf.optimizers.build(name, learning_rate, momentum, groups, window, l2, inner)`; |
|                              | `l2`: coupled L2 added to the gradient (robust optimizers only: m3, rm3, ...)        |
|                              | `weight_decay`: Keras' decoupled decay of the inner optimizer (0 = off)             |
| `learning_rate`              | base learning rate; the same value as `optimizer.learning_rate` (linked) |
| `lr_schedule.name`           | "constant", or "step": lr × `decay_factor` at each epoch in `decay_epochs`|
| `num_epochs`, `batch_size`   | training length (epochs) and mini-batch size (examples)                  |
| `drop_remainder`             | drop the last partial batch of every epoch (M3 groups stay equal-sized)  |
| `eval_batch_size`            | batch size of test evaluation and of the pristine/corrupted accuracies   |
| `seed`                       | seeds weights, label noise and the per-epoch data order                  |
| `keep_checkpoints`           | how many per-epoch checkpoints to keep in `WORKDIR/checkpoints`          |
| `distribution`               | "none" (one device, Keras `fit`), "mirrored" (all local devices),       |
|                              | "multi_worker" (cluster from `TF_CONFIG`), "tpu" (TPUClusterResolver);   |
|                              | global batch = `batch_size`, split over replicas (`trainers/distributed_loop.py`) |
| `collective_timeout`         | multi_worker: seconds a worker waits in a collective for a hung peer    |
|                              | before stopping with one line (a dead peer is seen sooner, by heartbeats); |
|                              | must exceed the chief's epoch-end work (measurements, checkpoint)        |
| `mode`, `coherence.*`,       | the measurement features, all off here (the defaults of every config):  |
| `optimizer.aggregation`, ... | see the feature table below                                             |

Feature fields (optional in a config: `trainers/config_schema.py` fills an absent one with the
value set in `get_config` below, so a config without them trains as the plain trainer):

| field                          | meaning                                                          |
|--------------------------------|------------------------------------------------------------------|
| `mode`                         | "train" (the one mode of `trainers/train.py`)                    |
| `coherence.every`              | m-coherence / alpha of the training batch every N steps (0 = off) |
| `coherence.per_layer`          | also `m_coherence/<layer>` (batch) and per-layer monitor values  |
| `coherence.training`           | per-example gradients in training mode (default inference mode)  |
| `coherence.monitor_samples`    | m of the fixed monitor samples train/test/pristine/corrupted (0 = off) |
| `coherence.monitor_every_steps`| monitor and f^p / f^c also every N batches, at step 0 and every epoch end (`step_history` of results.json; 0 = epoch ends only) |
| `optimizer.aggregation`        | "mean" or "winsorize" (coordinate-wise, `cgh_tf.Model`)          |
| `optimizer.winsorize_pct`      | c in [0, 50): percent clipped on each side of the batch; unset (None), and required with "winsorize" (0 = a plain mean computed per example, spelled out) |
| `optimizer.m3_in_batch`        | M3 groups: False = k consecutive batches (authors' code, plain `keras.Model`), True = k contiguous parts of one batch (`cgh_tf.Model`, batch % k == 0) |
| `learning_times.every_steps`   | per-example learning times every N batches (0 = off)             |
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Return the default config (MNIST-1D, 50 % uniform label noise, MLP 2 x 256, plain SGD lr 0.2)."""
    config = ml_collections.ConfigDict()
    config.dataset = "mnist1d"
    config.data_dir = config_dict.placeholder(str)
    config.label_noise = 0.5
    config.noise_kind = "uniform"
    config.input_corruption = config_dict.placeholder(str)
    config.max_train = config_dict.placeholder(int)
    config.max_test = config_dict.placeholder(int)

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict({"depth": 2, "width": 256})

    learning_rate = ml_collections.FieldReference(0.2)
    config.learning_rate = learning_rate
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = learning_rate
    config.optimizer.momentum = 0.0
    config.optimizer.groups = 3
    config.optimizer.window = 3
    config.optimizer.l2 = 0.0
    config.optimizer.weight_decay = 0.0
    config.optimizer.inner = "sgd"

    config.lr_schedule = ml_collections.ConfigDict()
    config.lr_schedule.name = "constant"
    config.lr_schedule.decay_epochs = ()
    config.lr_schedule.decay_factor = 0.1

    config.num_epochs = 60
    config.batch_size = 64
    config.drop_remainder = False
    config.eval_batch_size = 1000
    config.seed = 0
    config.keep_checkpoints = 1
    config.distribution = "none"
    config.collective_timeout = 600.0

    config.mode = "train"
    config.coherence = ml_collections.ConfigDict()
    config.coherence.every = 0
    config.coherence.per_layer = False
    config.coherence.training = False
    config.coherence.monitor_samples = 0
    config.coherence.monitor_every_steps = 0
    config.optimizer.aggregation = "mean"
    config.optimizer.winsorize_pct = config_dict.placeholder(float)  # required with "winsorize"
    config.optimizer.m3_in_batch = False
    config.learning_times = ml_collections.ConfigDict()
    config.learning_times.every_steps = 0
    return config
