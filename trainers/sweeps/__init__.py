r"""The papers' experiments as sweeps of trainer configs (`trainers/sweep.py`), one module each.

A sweep is a list of `Arm`s — each one `trainers.train` config trained into its own
sub-workdir — together with the `Metric`s of its `results.md` table and the `Figure`s of its PNGs.
`build(name, scale, seeds, overrides)` returns one; `trainers.reproduce` runs it.

| name             | paper (figure)                    | arms (per seed)                                                 |
|------------------|-----------------------------------|-----------------------------------------------------------------|
| `real_vs_random` | 2203.10036 Fig. 3; 2008.01217     | real labels vs 100 % random labels (`configs/real_vs_random.py`): |
|                  |                                   | m-coherence of fixed train / test samples (same m) at step 0,   |
|                  |                                   | every 9 steps and every epoch, whole model and per layer         |
| `memorisation`   | 2003.07422; 2002.10657 (winsor.)  | SGD, M3, RM3, RA3 and the update-count control `sgd_x3` (plain SGD, |
|                  |                                   | batch x 3 = M3's number of updates) at 0 / 25 / 50 % label noise;  |
|                  |                                   | winsorized SGD at 50 % noise (small scale: c = 2, 4, 8 %; the      |
|                  |                                   | `sgd` arm is c = 0)                                              |
| `easy_hard`      | 2003.07422                        | `configs/easy_hard.py`: probe run, easy / hard split, a run on each |
|                  |                                   | part tested on its own held-out half                             |

Default seeds: 2 (real_vs_random; memorisation: 18 arms × 2), 3 (easy_hard).

The experiments beyond these sweeps (loss_fractions, which replaced its sweep, grokking, double descent, early stopping, adversarial
initialisation, depth and width, real vs random across architectures, scale) run their own
resumable loops and are declarations run by `trainers/runner.py` (`trainers/catalog.py`; same
`trainers.reproduce` command).

Step measurements (`coherence.monitor_every_steps`, `feature_callbacks.StepMeasurements`) go to the
`step_history` of each arm's results.json; the table cells "step 0" / "after N steps" and the
`*_vs_step.png` figures read it, the "(last)" cells the per-epoch `history`.

Scales (`--scale`): `small` = the embedded MNIST-1D with the MLP of `configs/default.py`, epochs
cut to fit < 10 minutes per experiment on 2 CPU cores (`SMALL_SCALE`, `SMALL_SCALE_ARGS`);
`cifar10` / `imagenet` = `configs/cifar10_resnet18.py` / `configs/imagenet_resnet50.py`
(`configs/imagenet_easy_hard.py` for easy_hard): the authors' hyperparameters, all their epochs,
every arm of the experiment (these need the tfds data and accelerators).

With batch 64 and the nearest-rank percentile, winsorizing c = 1 % and c = 2 % clip the same single
extreme value per side (rank round(0.01·63) = round(0.02·63) = 1), hence c = 2, 4, 8 (1, 3 and 5
values per side) at the small scale.

Arm conventions (all scales):
* M3 / RM3 / RA3 and the `sgd` / `sgd_x3` baselines of `memorisation` use plain SGD (momentum 0),
  as the authors' M3/RM3 code; the base config's weight decay becomes coupled L2 (`optimizer.l2`,
  added before the median) for the robust optimizers and stays Keras' decoupled `weight_decay`
  for plain SGD, which for momentum-free SGD is the same update (w -= lr (g + λ w)).
* `sgd_x3` keeps the learning rate of `sgd` and triples the batch: it makes one update per 3·B
  examples, exactly as M3 (which consumes 3 batches of B per update).
* `seed` seeds weights, label noise and data order; arm `X` seed `s` lives in `WORKDIR/X/seed<s>`.
"""

from trainers import config_schema
from trainers import sweep
from trainers.sweep import Sweep
from trainers.sweeps import easy_hard, memorisation, real_vs_random

# name -> (builder, default number of seeds)
EXPERIMENTS = {
    "real_vs_random": (real_vs_random.real_vs_random, 2),
    "memorisation": (memorisation.memorisation, 2),
    "easy_hard": (easy_hard.easy_hard, 3),
}
# Default builder arguments at the small scale (time budget; see the module docstring).
SMALL_SCALE_ARGS = {"memorisation": {"winsorize_pcts": (2.0, 4.0, 8.0)}}
SMALL_SCALE = {  # default overrides at the small scale (chosen for < 10 min on 2 busy cores)
    "real_vs_random": {"num_epochs": 20},
    "memorisation": {"num_epochs": 30},
    "easy_hard": {"num_epochs": 30},
}


def build(name: str, scale: str = "small", seeds=None, overrides=None, **kwargs) -> Sweep:
    """Experiment `name` at `scale` with seeds 0..seeds-1 (default: the experiment's own).

    overrides: `{"field.path": value}` applied to the base config of every arm (after the scale's
    defaults, before the arm's own changes), e.g. `{"num_epochs": 1, "max_train": 256}`.
    kwargs go to the experiment's builder (e.g. `noise_levels=(0.5,)` for memorisation).
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment={name!r} is unknown; allowed: {', '.join(EXPERIMENTS)}")
    builder, default_seeds = EXPERIMENTS[name]
    seeds = default_seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive int (the number of seeds)")
    base = sweep.base_config(scale, name)
    if scale == "small":
        base = config_schema.apply_overrides(base, SMALL_SCALE[name])
        kwargs = {**SMALL_SCALE_ARGS.get(name, {}), **kwargs}
    base = config_schema.apply_overrides(base, overrides)
    return builder(base, tuple(range(seeds)), **kwargs)
