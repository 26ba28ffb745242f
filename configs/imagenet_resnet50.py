"""ImageNet 2012, ResNet-50: batch 256, SGD lr 0.1, momentum 0.9, L2 1e-4, ×0.1 at epochs 30 and 60, 90 epochs.

The standard recipe used by the authors' ImageNet experiments (arXiv 2003.07422, 2203.10036);
weight decay is Keras' decoupled form (see `configs/cifar10_resnet18.py`). Needs the tfds
`imagenet2012` data prepared in `data_dir` (no download here) and, since `cgh_tf.data.load` holds
splits as arrays, `max_train` / `max_test` small enough to fit in memory.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the ImageNet / ResNet-50 config."""
    config = default.get_config()
    config.dataset = "imagenet2012"
    config.label_noise = 0.0
    config.model.name = "resnet50_imagenet"
    config.model.kwargs = ml_collections.ConfigDict()
    config.learning_rate = 0.1
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4  # decoupled (Keras); see module docstring
    config.lr_schedule.name = "step"
    config.lr_schedule.decay_epochs = (30, 60)
    config.lr_schedule.decay_factor = 0.1
    config.num_epochs = 90
    config.batch_size = 256
    config.eval_batch_size = 500
    config.keep_checkpoints = 2
    return config
