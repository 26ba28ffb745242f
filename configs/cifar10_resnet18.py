"""CIFAR-10, ResNet-18 (CIFAR variant), the authors' hyperparameters (arXiv 2003.07422).

SGD, learning rate 0.1, momentum 0.9, batch 128, weight decay 5e-4, step decay ×0.1 at epochs 100
and 150, 200 epochs. Label noise off; set `--config.label_noise=0.5` for the memorisation experiment.

Weight decay: the authors' PyTorch SGD adds 5e-4·w to the gradient (coupled L2, before momentum).
`cgh_tf.optimizers.build("sgd", ...)` only offers Keras' decoupled `weight_decay`, used here; the
robust optimizers take the coupled form as `optimizer.l2` (set `weight_decay=0, l2=5e-4` with m3/rm3).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the CIFAR-10 / ResNet-18 config."""
    config = default.get_config()
    config.dataset = "cifar10"
    config.label_noise = 0.0
    config.model.name = "resnet18_cifar"
    config.model.kwargs = ml_collections.ConfigDict()
    config.learning_rate = 0.1
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4  # decoupled (Keras); see module docstring
    config.lr_schedule.name = "step"
    config.lr_schedule.decay_epochs = (100, 150)
    config.lr_schedule.decay_factor = 0.1
    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 500
    return config
