"""The experiments with their own resumable loops, run by `trainers.reproduce`.

    python -m trainers.reproduce --experiment=NAME --workdir=DIR [--scale=small|full] [--seeds=2]
    python -m trainers.reproduce --experiment=NAME --workdir=DIR --set=dataset=mnist5k

| name                  | module / config                  | what                                           |
|-----------------------|----------------------------------|------------------------------------------------|
| `early_stopping`      | `early_stopping.py`              | stopping rules under label noise, coherence as a signal |
| `adversarial_init`    | `adversarial_init.py`            | random-label pretraining, then real labels     |
| `depth_width`         | `depth_width.py`                 | MLP width and depth sweeps: coherence vs gap   |
| `real_vs_random_arch` | `real_vs_random_arch.py`         | real vs random labels for MLP, CNN, ResNet     |
| `scale`               | `scale.py`                       | memorisation suppression vs training-set size  |
| `grokking`            | `grokking.py`                    | beyond the papers: modular arithmetic          |
| `double_descent`      | `double_descent.py`              | beyond the papers: model- and epoch-wise       |

(modules in `trainers/`, configs of the same name in `configs/`). They are not in
`trainers.sweeps.EXPERIMENTS`; `--set=FIELD=VALUE` sets a field of every run's config
(`--set=dataset=NAME` runs only that dataset where an experiment has several). Every run's config
is checked before the first run starts and before the workdir is created. Each writes
`WORKDIR/results.md`, `results.json`, PNG figures and an HParams session per run; finished runs
are skipped and an interrupted one resumes from its last checkpoint.
"""

import importlib

EXPERIMENTS = {"grokking": "trainers.grokking", "double_descent": "trainers.double_descent",
               "early_stopping": "trainers.early_stopping",
               "adversarial_init": "trainers.adversarial_init",
               "depth_width": "trainers.depth_width",
               "real_vs_random_arch": "trainers.real_vs_random_arch",
               "scale": "trainers.scale"}
SCALES = ("small", "full")


def run(name, workdir, scale="small", seeds=None, overrides=None, command=""):
    module = importlib.import_module(EXPERIMENTS[name])
    if scale not in SCALES:
        raise ValueError(f"--scale={scale} is not available for {name}; allowed: "
                         f"{', '.join(SCALES)}")
    return module.reproduce(workdir, scale=scale, seeds=seeds or module.DEFAULT_SEEDS,
                            overrides=overrides, command=command)
