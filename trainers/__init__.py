"""absl trainer binaries: `python -m trainers.<name> --config=configs/X.py --workdir=DIR`.

| module                 | what                                                                  |
|------------------------|-----------------------------------------------------------------------|
| `trainers.train`       | one run of a config with Keras `fit`: resumable, deterministic, atomic outputs |
| `trainers.reproduce`   | one experiment (all arms, seeds) -> per-arm runs, figures, results.md |
| `trainers.demo`        | `make demo`: memorisation at 50 % noise, SGD / M3 / RM3 / the update-count control |

The modules behind them, one concern each, are listed in docs/design.md, section 7.
"""

import cgh_tf  # noqa: E402,F401 - first: quiet by default (cgh_tf/quiet.py) before TensorFlow loads
