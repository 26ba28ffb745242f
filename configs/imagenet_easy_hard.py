"""Easy vs hard examples on ImageNet (arXiv 2003.07422): 2 epochs of ResNet-18 define "easy".

As `configs/easy_hard.py` (see there for the three steps), with the ImageNet recipe of
`configs/imagenet_resnet50.py` on a ResNet-18: SGD lr 0.1, momentum 0.9, decoupled weight decay
1e-4, batch 256; the probe trains 2 epochs, each part then 90 epochs from scratch (×0.1 at 30, 60).

`cgh_tf.data.load` holds splits as in-memory arrays (224 × 224 × 3 float32 = 0.6 MB an example),
so `max_train` = 40,000 (≈ 24 GB) and `max_test` = 5,000; raise them only with the memory for it.
Needs the tfds `imagenet2012` data prepared in `data_dir` (this package never downloads).
"""

import ml_collections

from configs import imagenet_resnet50


def get_config() -> ml_collections.ConfigDict:
    """Return the ImageNet / ResNet-18 easy / hard config."""
    config = imagenet_resnet50.get_config()
    config.mode = "easy_hard"
    config.model.name = "resnet18_imagenet"
    config.model.kwargs = ml_collections.ConfigDict()
    config.max_train = 40_000
    config.max_test = 5_000
    config.easy_hard.probe_epochs = 2
    config.easy_hard.test_fraction = 0.5
    return config
