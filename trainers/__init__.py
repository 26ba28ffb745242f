"""absl trainer binaries: `python -m trainers.<name> --config=configs/X.py --workdir=DIR`.

| module               | what                                                                  |
|----------------------|-----------------------------------------------------------------------|
| `trainers.train`     | one run of a config with Keras `fit`: resumable, deterministic, atomic outputs |
| `trainers.reproduce` | one paper experiment (all arms, seeds) -> per-arm runs, figures, results.md |
| `trainers.demo`      | `make demo`: memorisation at 50 % noise, SGD / M3 / RM3 / the update-count control |
| `trainers.experiments` | the experiments as lists of arms (configs), their table columns and figures |
| `trainers.report`    | aggregation over seeds, results.md / results.json, PNG figures          |
| `trainers.builders`  | config -> data, model, optimizer, schedule, input pipeline (no flags)  |
| `trainers.io`        | atomic writes, checkpoints, results.json, the PNG of the curves        |
"""
