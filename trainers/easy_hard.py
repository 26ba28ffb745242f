"""The easy / hard experiment of 2003.07422 as one trainer mode (`mode="easy_hard"`;
docs/design.md, "Trainers"): a probe run defines "easy", each part is trained on separately.
"""

import csv
import os
import time

from absl import logging
import ml_collections
import numpy as np

from cgh_tf import callbacks as cgh_callbacks
from cgh_tf import data as cgh_data
from cgh_tf.atomic_files import atomic_open
from trainers import config_schema
from trainers import factories
from trainers import outputs
from trainers import single_run
from trainers.config_schema import ConfigError, setting


def predicted_correctly(model, split, batch_size: int = 1000) -> np.ndarray:
    """`[n]` bool: argmax of `model(x, training=False)` equals the training label `split.y`."""
    predictions = [np.argmax(model(split.x[i:i + batch_size], training=False), axis=-1)
                   for i in range(0, len(split), batch_size)]
    return np.concatenate(predictions).astype(np.int64) == np.asarray(split.y, np.int64)


def easy_mask_from_csv(path: str, split) -> np.ndarray:
    """`[n]` bool easy mask of `split` from a learning-times CSV (`last_prediction == label`).

    Rows are matched by `example_id`; ConfigError if the CSV lacks examples of `split` or its labels
    differ (it belongs to another dataset / noise setting).
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        by_id = {int(r["example_id"]): (int(r["label"]), int(r["last_prediction"])) for r in rows}
    except (KeyError, ValueError) as error:
        raise ConfigError(f"easy_hard.learning_times_csv={path!r} is not a learning-times CSV "
                          f"({error})") from error
    ids = np.asarray(split.example_id)
    missing = [int(i) for i in ids if int(i) not in by_id]
    if missing:
        raise ConfigError(f"easy_hard.learning_times_csv={path!r} has no rows for {len(missing)} "
                          f"training examples (e.g. id {missing[0]}); it belongs to another run")
    labels = np.array([by_id[int(i)][0] for i in ids], np.int64)
    if not np.array_equal(labels, np.asarray(split.y, np.int64)):
        raise ConfigError(f"easy_hard.learning_times_csv={path!r}: its labels differ from the "
                          f"training labels of this config (other dataset, noise or seed)")
    return cgh_callbacks.easy_mask({"label": labels,
                                "last_prediction": np.array([by_id[int(i)][1] for i in ids])})


def part_config(config, part: str, num_epochs=None) -> ml_collections.ConfigDict:
    """A copy of an easy/hard config for one sub-run: `mode="train"`, `easy_hard.part=part`."""
    sub = config_schema.add_feature_fields(ml_collections.ConfigDict(config.to_dict()))
    sub.mode = "train"
    sub.easy_hard.part = part
    if num_epochs is not None:
        sub.num_epochs = int(num_epochs)
    return sub


EASY_HARD_SPLIT_CSV = "easy_hard_split.csv"
EASY_HARD_PARTS = ("easy", "hard")


def train_easy_hard(config, workdir: str, progress: bool = True) -> dict:
    """The easy / hard experiment of 2003.07422 in `workdir`; returns the dict of `results.json`.

    1. Define "easy": train the config for `easy_hard.probe_epochs` epochs in `WORKDIR/probe` and
       call a training example easy if the probe classifies it correctly (inference mode, against
       its training label) — or read `last_prediction == label` from `easy_hard.learning_times_csv`.
    2. `cgh_tf.data.easy_hard_datasets`: each part gets its own train / test split
       (`easy_hard.test_fraction`, seed `config.seed`, classes of the original dataset);
       `WORKDIR/easy_hard_split.csv` lists `example_id, part, role` of every training example.
    3. Train a fresh model (same initial weights: same seed) on each part for `num_epochs` in
       `WORKDIR/easy` and `WORKDIR/hard` (each a complete, resumable trainer workdir).

    `results.json` holds per part the sizes, its final test accuracy on its own test split, its
    pristine training accuracy, and the probe's figures. Everything is resumable: finished sub-runs
    are only re-reported.
    """
    config_schema.validate(config)
    started = time.time()
    data = factories.load_data(config)
    csv_path = setting(config, "easy_hard.learning_times_csv")
    probe = None
    if csv_path is None:
        probe_config = part_config(
            config, "probe", num_epochs=setting(config, "easy_hard.probe_epochs"))
        probe, probe_model = single_run.run(probe_config, os.path.join(workdir, "probe"), progress, data)
        easy = predicted_correctly(probe_model, data.train, config.eval_batch_size)
    else:
        easy = easy_mask_from_csv(csv_path, data.train)
    parts = dict(zip(EASY_HARD_PARTS, cgh_data.easy_hard_datasets(
        data, easy, test_fraction=setting(config, "easy_hard.test_fraction"),
        seed=config.seed)))
    for name, part in parts.items():
        if len(part.train) == 0 or len(part.test) == 0:
            raise ConfigError(
                f"the {name} part has {len(part.train)} training and {len(part.test)} test "
                f"examples ({int(easy.sum())} of {len(easy)} examples are easy); change "
                f"easy_hard.probe_epochs, max_train or easy_hard.test_fraction")
    os.makedirs(workdir, exist_ok=True)
    _write_split_csv(os.path.join(workdir, EASY_HARD_SPLIT_CSV), parts)
    part_results = {name: single_run.run(part_config(config, name), os.path.join(workdir, name),
                                 progress, part)[0]
                    for name, part in parts.items()}
    results = _easy_hard_results(config, data, easy, probe, part_results, csv_path)
    outputs.write_json(os.path.join(workdir, outputs.RESULTS_FILE), results)
    outputs.write_json(os.path.join(workdir, outputs.TIMINGS_FILE),
                  {"total_seconds": round(time.time() - started, 3)})
    logging.info("easy / hard results in %s", os.path.join(workdir, outputs.RESULTS_FILE))
    return results


def _write_split_csv(path, parts):
    """Rows `example_id, part, role, label, corrupted` (role: train / test), sorted by id."""
    rows = []
    for name, part in parts.items():
        for role, split in (("train", part.train), ("test", part.test)):
            rows += [(int(i), name, role, int(y), int(c))
                     for i, y, c in zip(split.example_id, split.original_y, split.corrupted)]
    with atomic_open(path, "w") as f:
        f.write("example_id,part,role,original_label,corrupted\n")
        f.writelines(",".join(map(str, row)) + "\n" for row in sorted(rows))


def _easy_hard_results(config, data, easy, probe, part_results, csv_path):
    def summary(results):
        return {"num_train": results["dataset"]["num_train"],
                "num_test": results["dataset"]["num_test"],
                "num_train_corrupted": results["dataset"]["num_train_corrupted"],
                "epochs_completed": results["epochs_completed"],
                **results["final"]}

    return {
        "config": outputs.json_roundtrip(config.to_dict()),
        "mode": "easy_hard",
        "easy_defined_by": ("probe" if csv_path is None else f"learning_times_csv:{csv_path}"),
        "dataset": {"name": data.name, "num_train": len(data.train),
                    "num_train_corrupted": int(data.train.corrupted.sum()),
                    "num_easy": int(easy.sum()), "num_hard": int((~easy).sum())},
        "probe": None if probe is None else summary(probe),
        **{name: summary(results) for name, results in part_results.items()},
        "final": {f"{name}_test_accuracy": results["final"]["test_accuracy"]
                  for name, results in part_results.items()},
    }
