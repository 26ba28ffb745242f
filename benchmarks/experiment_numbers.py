r"""The numbers of every declared experiment at a tiny scale, as one JSON: the same-numbers check
of a refactoring (issue 23: "results.json bit-identical for the same seeds before / after").

Run it once on the old code and once on the new (each with its own checkout first on PYTHONPATH)
and compare the two files:

    PYTHONPATH=/tmp/old python benchmarks/experiment_numbers.py --out=/tmp/old.json
    PYTHONPATH=.        python benchmarks/experiment_numbers.py --out=/tmp/new.json
    python benchmarks/experiment_numbers.py --compare /tmp/old.json /tmp/new.json

The JSON holds, per experiment, per arm directory, every part of the run's result but its config
and timing (`summary`, `curves`, a fit arm's `step_curves`, per-run extras such as `profiles`);
JSON writes a float as its shortest round-trip repr, so equal values read back mean bit-identical
numbers (results hold no NaN: `outputs` writes None). `--only=a,b` runs some experiments.
"""

import argparse
import importlib
import json
import sys
import tempfile

# experiment -> (--set overrides of a tiny run, seeds); a key "_arms" holds keyword arguments of
# the module's `arms` that no --set reaches (memorisation's arm lists)
TINY = {
    "double_descent": ({"epochs": 2, "log_epochs": (0, 1, 2), "coherence_samples": 16,
                        "fraction_samples": 32, "widths": (4, 16)}, 2),
    "scale": ({"epochs": 2, "log_epochs": (0, 1, 2), "width": 16, "batch_size": 10,
               "arms": ("sgd", "m3", "winsorize"), "sizes": (60, 120)}, 2),
    "grokking": ({"p": 7, "steps": 6, "log_every": 2, "checkpoint_every": 2,
                  "print_every_logs": 1, "coherence_samples": 8,
                  "groups": ("mlp_adamw", "mlp_m3", "transformer_adamw")}, 2),
    "depth_width": ({"dataset": "mnist1d", "max_train": 64, "coherence_samples": 8,
                     "batch_size": 32, "epochs": 2, "random_epochs": 2,
                     "widths": (4,), "depths": (1, 2), "fixed_depth": 1, "fixed_width": 4}, 2),
    "early_stopping": ({"max_train": 300, "max_test": 200, "epochs": 2, "early_epochs": 1,
                        "coherence_samples": 16, "noise_levels": (0.5,)}, 2),
    "real_vs_random_arch": ({"dataset": "mnist1d", "max_train": 64, "max_test": 32,
                             "coherence_samples": 16, "batch_size": 32, "epochs": 2,
                             "log_epochs": (0, 0.5, 1, 2), "width": 16, "depth": 1,
                             "resnet_filters": (4,), "cnn_filters": (4,), "dense_width": 8}, 2),
    "adversarial_init": ({"max_train": 256, "max_test": 128, "width": 32, "depth": 1,
                          "epochs": 3, "coherence_samples": 16,
                          "optimizers": ("sgd", "m3")}, 2),
    "alignment_order": ({"dataset": "mnist1d", "epochs": 3, "width": 16, "depth": 1,
                         "batch_size": 256, "null_permutations": 3,
                         "checkpoint_every_logs": 2}, 2),
    "easy_hard": ({"dataset": "mnist1d", "epochs": 2, "probe_epochs": 1, "width": 16, "depth": 1,
                   "batch_size": 256, "coherence_samples": 24}, 2),
    "label_noise_detection": ({"dataset": "mnist1d", "label_noise": 0.4, "epochs": 3,
                               "score_epochs": (0, 1, 3), "width": 16, "depth": 1,
                               "batch_size": 256, "null_permutations": 3}, 2),
    "loss_fractions": ({"epochs": 1, "train_size": 200, "fraction_samples": 32,
                        "every_step_until": 3, "early_window": (0, 2), "width": 16,
                        "dataset": "mnist1d"}, 2),
    "noise_structure": ({"epochs": 1, "train_size": 200, "coherence_samples": 8, "width": 16,
                         "arms": ("sgd", "rm3", "winsorize")}, 2),
    "winsorize_controls": ({"epochs": 2, "train_size": 260, "width": 16,
                            "calibration_batches": 1, "frontier_pristine": 0.2,
                            "pcts": (4.0,)}, 2),
    "memorisation": ({"num_epochs": 1, "max_train": 300, "max_test": 100,
                      "_arms": {"noise_levels": (0.0, 0.5), "methods": ("sgd", "m3", "sgd_x3"),
                                "winsorize_pcts": (2.0,)}}, 2),
    "real_vs_random": ({"num_epochs": 1, "max_train": 300, "max_test": 100,
                        "coherence.monitor_samples": 8, "coherence.monitor_every_steps": 2,
                        "learning_times.every_steps": 0}, 2),
}
NOT_NUMBERS = ("config", "config_version", "finished", "seconds_last_invocation")


def tiny_plan(name):
    """(experiment module, its arms at the tiny config `TINY[name]`), every config checked."""
    from trainers import runner

    module = importlib.import_module(f"trainers.{name}")
    overrides, seeds = TINY[name]
    arm_kwargs = overrides.get("_arms")
    overrides = {k: v for k, v in overrides.items() if not k.startswith("_")}
    return module, (module.arms("small", seeds, overrides, **arm_kwargs) if arm_kwargs
                    else runner.plan(module.EXPERIMENT, "small", seeds, overrides))


def numbers(name):
    """{arm path: every part of its result but config and timing} of a tiny run of experiment
    `name` in a fresh workdir."""
    module, arms = tiny_plan(name)
    with tempfile.TemporaryDirectory() as workdir:
        runs = [(arm, module.EXPERIMENT.run_arm(arm.config, f"{workdir}/{arm.path}", echo=None))
                for arm in arms]
    return {arm.path: {k: v for k, v in r.items() if k not in NOT_NUMBERS} for arm, r in runs}


def compare(old_path, new_path):
    """Print per experiment of both files whether every number is identical (keys only the new
    run has are listed as added, not as differences); exit 1 if any number differs."""
    old, new = (json.load(open(p)) for p in (old_path, new_path))
    bad = 0
    for name in (n for n in old if n in new):
        diffs, added = [], set()
        for path, run in old[name].items():
            other = new[name].get(path)
            if other is None:
                diffs.append(f"{path}: missing")
                continue
            for part, values in run.items():
                got = other.get(part)
                if not isinstance(values, dict) or not isinstance(got, dict):
                    diffs += [f"{path} {part}: {values} != {got}"] if got != values else []
                    continue
                added |= {f"{part}[{k}]" for k in set(got) - set(values)}
                diffs += [f"{path} {part}[{k}]: {v} != {got.get(k)}"
                          for k, v in sorted(values.items()) if got.get(k) != v]
        print(f"{name}: " + ("identical" if not diffs else f"{len(diffs)} differences")
              + (f"; added {sorted(added)}" if added else ""))
        for line in diffs[:20]:
            print("   ", line)
        bad += bool(diffs)
    return 1 if bad else 0


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--only", default=",".join(TINY))
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    out = {}
    for name in args.only.split(","):
        out[name] = numbers(name)
        print(name, len(out[name]), "runs", flush=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
