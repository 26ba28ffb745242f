"""absl trainer binaries: `python -m trainers.<name> --config=configs/X.py --workdir=DIR`.

| module               | what                                                                  |
|----------------------|-----------------------------------------------------------------------|
| `trainers.train`     | one run of a config with Keras `fit`: resumable, deterministic, atomic outputs |
| `trainers.demo`      | the default experiment (named arms) into a fresh workdir + a results table |
| `trainers.builders`  | config -> data, model, optimizer, schedule, input pipeline (no flags)  |
| `trainers.io`        | atomic writes, checkpoints, results.json, the PNG of the curves        |
"""
