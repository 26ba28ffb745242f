"""What `--dry_run` prints: the arms (as their grid) and an estimated wall-clock time.

| function                          | returns                                                      |
|-----------------------------------|--------------------------------------------------------------|
| `grid(configs)`                   | `{field: distinct values}` of the config fields that differ across runs (seed apart) |
| `describe(arms)`                  | lines: arms, groups × seeds, the grid, the groups            |
| `estimate(arms, workdir, ...)`    | `Estimate`: seconds (None: unknown) and the line saying where they come from |
| `time_updates(config)`            | seconds of a warm-up, a training step and an evaluation batch, timed in memory |
| `measured_seconds(config, ...)`   | seconds of one trainer run, from updates timed in memory     |
| `lines(arms, workdir, published)` | `describe` + the estimate line: what both dry runs print     |

Sources of the estimate, per arm, in this order:

1. **Earlier timings**: `WORKDIR/timings.json` of an earlier run of the experiment (per arm of a
   sweep; per group of a declared experiment, split evenly over its planned seeds).
2. **Measured**: a trainer config (`trainers/config_schema.py`, the arms of the papers' sweeps and
   `trainers.train --dry_run`) is built in memory on random inputs of its dataset's shape, and
   `TIMED_STEPS` update cycles of training steps (Keras `fit`) and one evaluation batch are timed
   after a warm-up (which compiles, and is counted once per run); × the run's batches
   (`factories.dataset_sizes`).
   Once per distinct model / optimizer / batch shape (`COST_FIELDS`). Not counted: checkpoints,
   the coherence monitor, learning times, a multi-device strategy (timed on one device).
3. **Published** (a declared experiment's own loop): the `training_seconds` per group of the experiment's published run
   (`results/<name>/results.json` of a clone, `published_path`), per seed; used only when the plan
   is the published one's setting (default scale, no `--set`), since other settings cost
   differently. The line says the published run's machine and load may differ from this one.
4. Otherwise none: a declared experiment's own loop is not timed without running it; the line
   says so.

Nothing is written and nothing is trained: the timed steps update a throw-away model in memory.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

import numpy as np

from trainers import config_schema
from trainers import hparams_board
from trainers import outputs

TIMED_STEPS = 3
SLOW_WARMUP_SECONDS = 20.0  # a warm-up slower than this times 1 cycle instead of TIMED_STEPS
MAX_TIMED_INPUT_VALUES = 1 << 22  # larger batches are timed at a fraction, scaled linearly
# The fields that change the cost of a training step (the rest: seed, noise, lr, epochs, sizes).
COST_FIELDS = ("dataset", "model", "optimizer.name", "optimizer.groups", "optimizer.window",
               "optimizer.inner", "optimizer.aggregation", "optimizer.winsorize_pct",
               "optimizer.m3_in_batch", "batch_size", "eval_batch_size", "coherence.every",
               "coherence.per_layer", "coherence.training")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """seconds: total of the planned arms, None when some arm has no source. source: one line."""

    seconds: float | None
    source: str


def grid(configs) -> dict:
    """`{field: [values]}` (as text, sorted) of the dotted fields whose value differs across
    `configs` (ConfigDicts), `seed` left out (the seeds are reported as a count)."""
    flats = [{field: str(value) for field, value
              in hparams_board.flatten(outputs.json_roundtrip(c.to_dict())).items()}
             for c in configs]
    fields = sorted(set().union(*flats)) if flats else []
    varying = {}
    for field in fields:
        values = {flat.get(field, "(absent)") for flat in flats}
        if len(values) > 1 and field != "seed":
            varying[field] = sorted(values, key=_value_order)
    return varying


def _value_order(text: str) -> tuple:
    """None first, then numbers in numeric order, then everything else as text."""
    try:
        number = float(text)
    except ValueError:
        return (text != "None", 1, 0.0, text)
    return (True, 0, number, text)


def describe(arms) -> list:
    """Lines naming what the dry run planned: counts, then the grid of differing fields."""
    groups = list(dict.fromkeys(arm.group for arm in arms))
    seeds = sorted({arm.seed for arm in arms})
    lines = [f"{_count(len(arms), 'arm')}: {_count(len(groups), 'group')} × "
             f"{_count(len(seeds), 'seed')} ({', '.join(map(str, seeds))})"]
    varying = grid([arm.config for arm in arms])
    if varying:
        lines += [f"  {field}: {', '.join(values)}" for field, values in varying.items()]
    lines.append("  groups: " + ", ".join(groups))
    return lines


def _earlier_seconds(arms, workdir) -> dict:
    """`{arm path: seconds}` from an earlier run's `WORKDIR/timings.json` (sweep: per arm path;
    declared: per group, shared evenly by the group's planned seeds)."""
    if workdir is None:
        return {}
    path = os.path.join(workdir, "timings.json")
    try:
        with open(path) as f:
            recorded = json.load(f).get("arms", {})
    except (OSError, ValueError, AttributeError):
        return {}
    seeds_of = {}
    for arm in arms:
        seeds_of[arm.group] = seeds_of.get(arm.group, 0) + 1
    found = {}
    for arm in arms:
        entry = recorded.get(arm.path)
        if isinstance(entry, dict) and not entry.get("skipped") and _is_seconds(entry.get("seconds")):
            found[arm.path] = float(entry["seconds"])
        elif _is_seconds(recorded.get(arm.group)):
            found[arm.path] = float(recorded[arm.group]) / seeds_of[arm.group]
    return found


def published_path(name: str) -> str:
    """`results/<name>/results.json` of this clone (absent from an installed wheel)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                        name, "results.json")


def _published_seconds(arms, path) -> dict:
    """`{arm path: seconds}` from a published results.json: its `training_seconds` of the arm's
    group (summed over the group's seeds there) divided by the number of those seeds."""
    try:
        with open(path) as f:
            summary = json.load(f)
        trained, groups = summary["training_seconds"], summary["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    found = {}
    for arm in arms:
        seconds, seeds = trained.get(arm.group), groups.get(arm.group, {}).get("seeds")
        if _is_seconds(seconds) and isinstance(seeds, list) and seeds:
            found[arm.path] = float(seconds) / len(seeds)
    return found


def _is_seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _is_trainer_config(config) -> bool:
    return all(field in config for field in ("dataset", "model", "optimizer", "batch_size",
                                             "num_epochs", "lr_schedule"))


def _cost_key(config) -> str:
    values = {}
    for field in COST_FIELDS:
        try:
            value = config_schema.setting(config, field)
        except (KeyError, AttributeError):
            value = None
        values[field] = value.to_dict() if hasattr(value, "to_dict") else value
    return json.dumps(values, sort_keys=True, default=str)


def time_updates(config, steps: int = TIMED_STEPS) -> dict:
    """Seconds of one training step and of one evaluation batch of `config`'s model and optimizer,
    timed in memory on random inputs: `{"warmup": s, "step": s, "eval": s, "scale": f}` (`scale`:
    the factor a batch too large to time whole was scaled by).

    Steps run through Keras `fit`, as the trainer's do: a first call compiles (and runs a whole
    update cycle: k batches of M3 over consecutive batches), then `step` is the difference of a
    call of `steps` more cycles and one of a single cycle, per batch (fit's per-call cost cancels).
    """
    import tensorflow as tf

    from trainers import factories, schedule

    input_shape, num_classes = factories.dataset_spec(config.dataset)
    batch = _timed_batch(config, math.prod(input_shape))
    model = factories.build_model(config, input_shape, num_classes)
    optimizer = factories.build_optimizer(config, schedule.build_schedule(config))
    factories.compile_model(model, optimizer, config)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *input_shape)).astype(np.float32)
    y = rng.integers(num_classes, size=batch)
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    cycle = config_schema.updates_per_batch(config)[1]  # batches per update

    def fit(count):
        return _seconds(lambda: model.fit(batches, epochs=1, steps_per_epoch=count,
                                                  verbose=0, shuffle=False))

    with _quiet_retracing():
        warmup = fit(cycle)
        steps = 1 if warmup > SLOW_WARMUP_SECONDS else steps  # a large model: keep it short
        long, short = fit(cycle * (1 + steps)), fit(cycle)
        # (when noise makes the difference vanish: the long call's mean, fit's overhead included)
        step = ((long - short) / (cycle * steps) if long > short
                else long / (cycle * (1 + steps)))
        warmup += _seconds(lambda: model.test_on_batch(x, y))  # traces the evaluation
        evaluate = _seconds(lambda: model.test_on_batch(x, y))
    return {"warmup": warmup, "step": step, "eval": evaluate, "scale": config.batch_size / batch}


def _timed_batch(config, values_per_example: int) -> int:
    """The config's batch size, or a multiple of its M3 groups holding about
    `MAX_TIMED_INPUT_VALUES` input values when the batch is larger."""
    batch = config.batch_size
    groups = config_schema.m3_groups(config) if config_schema.is_m3(config) else 1
    if batch * values_per_example <= MAX_TIMED_INPUT_VALUES:
        return batch
    return max(groups, MAX_TIMED_INPUT_VALUES // values_per_example // groups * groups)


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


@contextlib.contextmanager
def _quiet_retracing():
    """TensorFlow's Python logger at ERROR: every timed model traces its own train function,
    which TensorFlow would report as "excessive retracing" (a warning per model)."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def measured_seconds(config, timing: dict) -> float:
    """Seconds of one trainer run of `config` from `time_updates`' timing: one warm-up, the
    training steps of every epoch (easy_hard: the probe's epochs on all examples, then the easy
    and the hard part's, together the training share of the examples) and one evaluation pass
    over the test split and the training examples per epoch."""
    from trainers import factories, input_pipeline

    train, test = factories.dataset_sizes(config)
    epochs = [(config.num_epochs, train)]
    if config_schema.setting(config, "mode") == "easy_hard":
        kept = int(train * (1.0 - config_schema.setting(config, "easy_hard.test_fraction")))
        epochs = [(config_schema.setting(config, "easy_hard.probe_epochs"), train),
                  (config.num_epochs, kept)]
    seconds = timing["warmup"]
    for count, examples in epochs:
        steps = input_pipeline.steps_per_epoch(max(examples, config.batch_size),
                                               config.batch_size, config.drop_remainder)
        evaluations = math.ceil((examples + test) / config.batch_size)
        seconds += count * timing["scale"] * (steps * timing["step"] + evaluations * timing["eval"])
    return seconds


def estimate(arms, workdir: str | None, timer=None, published: str | None = None) -> Estimate:
    """The estimated wall-clock seconds of running `arms` into `workdir` (None: no earlier
    timings are looked for), and its source. timer: `time_updates` (None: this module's, looked
    up when called). published: the results.json of a published run of the same setting (None:
    not used)."""
    timer = timer or time_updates
    earlier = _earlier_seconds(arms, workdir)
    reference = _published_seconds(arms, published) if published else {}
    timings, seconds, measured, from_reference = {}, 0.0, 0, 0
    for arm in arms:
        if arm.path in earlier:
            seconds += earlier[arm.path]
        elif _is_trainer_config(arm.config):
            key = _cost_key(arm.config)
            if key not in timings:
                timings[key] = timer(arm.config)
            seconds += measured_seconds(arm.config, timings[key])
            measured += 1
        elif arm.path in reference:
            seconds += reference[arm.path]
            from_reference += 1
        else:
            return Estimate(None, "estimated time: unknown (no earlier timings.json in the "
                                  "workdir, and this experiment's own loop is not timed without "
                                  "running it)")
    parts = []
    if earlier:
        parts.append(f"{_count(len(earlier), 'arm')} from the timings.json of an earlier run")
    if from_reference:
        parts.append(f"{_count(from_reference, 'arm')} from the training seconds of the published "
                     f"run {os.path.relpath(published)} (its machine and load, not this one's)")
    if measured:
        parts.append(f"{_count(measured, 'arm')} from training steps timed in memory for each "
                     f"of {_count(len(timings), 'model/optimizer shape')}; "
                     f"checkpoints, coherence monitor and learning times not counted")
    return Estimate(seconds, f"estimated time: {_duration(seconds)} ({'; '.join(parts)})")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def lines(arms, workdir: str | None, published: str | None = None) -> list:
    """Everything a dry run prints after its first line: `describe`, then the estimate
    (`published`: as `estimate`)."""
    return describe(arms) + [estimate(arms, workdir, published=published).source]
