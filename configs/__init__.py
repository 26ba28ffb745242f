"""Experiment configs (ml_collections ConfigDicts), one file per experiment and scale.

| file                   | dataset (label noise)   | model             | optimizer                           | epochs |
|------------------------|-------------------------|-------------------|-------------------------------------|--------|
| `default.py`           | MNIST-1D (50 % uniform) | MLP 2 x 256       | plain SGD, lr 0.2, batch 64         | 60     |
| `m3.py`                | as default              | as default        | M3 (median of 3 means) around SGD   | 60     |
| `rm3.py`               | as default              | as default        | RM3 (running median of 3) around SGD| 60     |
| `cifar10_resnet18.py`  | CIFAR-10 (none)         | ResNet-18 (CIFAR) | SGD 0.1, mom. 0.9, wd 5e-4, batch 128, ×0.1 @ 100, 150 | 200 |
| `imagenet_resnet50.py` | ImageNet 2012 (none)    | ResNet-50         | SGD 0.1, mom. 0.9, wd 1e-4, batch 256, ×0.1 @ 30, 60   | 90  |
| `real_vs_random.py`    | MNIST-1D (0 % or 100 %) | as default        | SGD; coherence monitor on fixed samples | see file |
| `winsorize.py`         | MNIST-1D (as default)   | MLP 3 x 256       | winsorized SGD, batch 100, c ∈ {0, 1, 2, 4, 8} | see file |
| `grokking.py`          | (a ∘ b) mod 97 / 113 (`cgh_tf/modular.py`) | MLP on one-hot / 1-layer transformer | AdamW wd 1, β2 0.98, batch 512; M3 / RM3 / RA3 arms (`trainers/grokking.py`) | updates |
| `double_descent.py`    | MNIST-1D (15 %), mnist5k at `full` | MLP, widths 2..2048 | Adam 1e-3, batch 128, no wd (`trainers/double_descent.py`) | 150 |
| `easy_hard.py`         | MNIST-1D, mnist5k (none) | MLP 2 x 256      | SGD 0.1, batch 64; probe 2 epochs, a run per part and random control (`trainers/easy_hard.py`) | 30 |
| `alignment_order.py`   | MNIST-1D, mnist5k (none) | MLP 2 x 256      | SGD 0.05, batch 64; a_i at init vs learning epoch (`trainers/alignment_order.py`) | 30 |
| `label_noise_detection.py` | MNIST-1D, mnist5k (20 / 40 % other) | MLP 2 x 256 | SGD 0.1, batch 64; AUROC of −a_i, loss, forgetting (`trainers/label_noise_detection.py`) | 5 |

`default.py` takes about 40 s on 2 busy CPU cores (all training examples memorised by epoch 40).
Every config is a function `get_config()`; run one with
`python -m trainers.train --config=configs/default.py --workdir=DIR --config.num_epochs=2`.
The fields are documented in `configs/default.py`.
"""
