"""The two experiments beyond the papers, run by `trainers.reproduce` (issue 14).

    python -m trainers.reproduce --experiment=grokking --workdir=DIR [--scale=small|full] [--seeds=2]
    python -m trainers.reproduce --experiment=double_descent --workdir=DIR [--scale=small|full]
    python -m trainers.reproduce --experiment=double_descent --workdir=DIR --set=dataset=mnist5k

| name             | module                      | config                     |
|------------------|-----------------------------|----------------------------|
| `grokking`       | `trainers/grokking.py`      | `configs/grokking.py`      |
| `double_descent` | `trainers/double_descent.py`| `configs/double_descent.py`|

They use their own resumable custom loops (not `trainers.train`), so they are not in
`trainers.experiments.EXPERIMENTS`; `--set=FIELD=VALUE` sets a field of every run's config
(double descent: `--set=dataset=NAME` runs only that dataset, with its own width sweep and epochs
from `configs/double_descent.py`). Every run's config is checked before the first run starts.
Each writes `WORKDIR/results.md`, `results.json` and PNG figures; finished runs are skipped and an
interrupted one resumes from its last checkpoint.
"""

import importlib

EXPERIMENTS = {"grokking": "trainers.grokking", "double_descent": "trainers.double_descent"}
SCALES = ("small", "full")


def run(name, workdir, scale="small", seeds=None, overrides=None, command=""):
    module = importlib.import_module(EXPERIMENTS[name])
    if scale not in SCALES:
        raise ValueError(f"--scale={scale} is not available for {name}; allowed: "
                         f"{', '.join(SCALES)}")
    return module.reproduce(workdir, scale=scale, seeds=seeds or module.DEFAULT_SEEDS,
                            overrides=overrides, command=command)
