"""absl trainer binaries: `trainers.train` (one run of a config), `trainers.reproduce` (one
experiment: all arms and seeds, figures, results.md), `trainers.demo` (`make demo`); the modules
behind them: docs/design.md, section 7.
"""

import cgh_tf  # noqa: E402,F401 - first: quiet by default (cgh_tf/quiet.py) before TensorFlow loads
