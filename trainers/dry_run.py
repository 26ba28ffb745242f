"""What `--dry_run` prints: the arms (as their grid) and an estimated wall-clock time, per arm from
the first source that has it (docs/design.md §7.0, "the dry run"); nothing is written, nothing is
trained (the timed steps update a throw-away model).
"""

import collections
import json
import logging
import math
import os
import time

import numpy as np

from cgh_tf import quiet, workdir_lock
from trainers import config_schema, hparams_board, outputs, runner

PLAN_FILE = "plan.json"
TIMED_STEPS = 3
SLOW_WARMUP_SECONDS = 20.0  # a warm-up slower than this times 1 cycle instead of TIMED_STEPS
MAX_TIMED_INPUT_VALUES = 1 << 22  # larger batches are timed at a fraction, scaled linearly
# The fields that change the cost of a training step (the rest: seed, noise, lr, epochs, sizes).
COST_FIELDS = ("dataset", "model", "optimizer.name", "optimizer.groups", "optimizer.window",
               "optimizer.inner", "optimizer.aggregation", "optimizer.winsorize_pct",
               "optimizer.m3_in_batch", "batch_size", "eval_batch_size", "coherence.every",
               "coherence.per_layer", "coherence.training")


# seconds: total of the planned arms, None when some arm has no source; source: one line
Estimate = collections.namedtuple("Estimate", "seconds source")


def grid(configs) -> dict:
    """`{field: [values]}` (as text, sorted) of the dotted fields whose value differs across
    `configs` (ConfigDicts), `seed` left out (the seeds are reported as a count)."""
    flats = [{field: str(value) for field, value
              in hparams_board.flatten(outputs.json_roundtrip(c.to_dict())).items()}
             for c in configs]
    values = {field: {flat.get(field, "(absent)") for flat in flats}
              for field in sorted(set().union(*flats)) if field != "seed"}
    return {field: sorted(found, key=_value_order) for field, found in values.items()
            if len(found) > 1}


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
    lines += [f"  {field}: {', '.join(values)}"
              for field, values in grid([arm.config for arm in arms]).items()]
    return lines + ["  groups: " + ", ".join(groups)]


def published_path(name: str) -> str:
    """`results/<name>/results.json` of this clone (absent from an installed wheel)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                        name, "results.json")


def _recorded_seconds(arms, path, published) -> dict:
    """`{arm path: seconds}` from the JSON file `path`: an earlier run's timings.json (`arms`:
    seconds per group, shared by the group's planned seeds) or, `published`, a results.json
    (`training_seconds` per group, per seed of the group there); {} when absent or malformed."""
    try:
        with open(path) as f:
            recorded = json.load(f)
        if published:
            seconds = recorded["training_seconds"]
            seeds = {g: len(entry["seeds"]) for g, entry in recorded["groups"].items()}
        else:
            seconds, seeds = recorded["arms"], collections.Counter(arm.group for arm in arms)
        return {arm.path: float(seconds[arm.group]) / seeds[arm.group] for arm in arms
                if _is_seconds(seconds.get(arm.group)) and seeds.get(arm.group)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _is_seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _is_trainer_config(config) -> bool:
    return all(field in config for field in ("dataset", "model", "optimizer", "batch_size",
                                             "num_epochs", "lr_schedule"))


def _cost_key(config) -> str:
    """What decides a trainer config's step cost, as JSON (a feature field it lacks as its default,
    so it shares the timing of a config that spells the default out)."""
    values = [config_schema.setting(config, field) for field in COST_FIELDS]
    return json.dumps([value.to_dict() if hasattr(value, "to_dict") else value
                       for value in values], sort_keys=True, default=str)


def time_updates(config, steps: int = TIMED_STEPS) -> dict:
    """`{"warmup": s, "step": s, "eval": s, "scale": f}`: seconds of a training step (Keras
    `fit`, as the trainer; the difference of `steps` + 1 update cycles and 1, per batch, so fit's
    per-call cost cancels) and an evaluation batch of `config`'s model on random inputs, after a
    compiling warm-up; `scale`: the factor a batch too large to time whole was scaled by."""
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

    with quiet.logs_at_least(logging.ERROR):  # each timed model traces its own step
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
    kind, k = config_schema.optimizer_kind(config)
    groups = k if kind == "m" else 1  # M3's groups
    if batch * values_per_example <= MAX_TIMED_INPUT_VALUES:
        return batch
    return max(groups, MAX_TIMED_INPUT_VALUES // values_per_example // groups * groups)


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def measured_seconds(config, timing: dict) -> float:
    """Seconds of one trainer run of `config` from `time_updates`' timing: one warm-up, then per
    epoch the training steps and an evaluation of the test split and the training examples."""
    from trainers import factories, input_pipeline

    train, test = factories.dataset_sizes(config)
    steps = input_pipeline.steps_per_epoch(max(train, config.batch_size), config.batch_size,
                                           config.drop_remainder)
    evaluations = math.ceil((train + test) / config.batch_size)
    return timing["warmup"] + config.num_epochs * timing["scale"] * (
        steps * timing["step"] + evaluations * timing["eval"])


def estimate(arms, workdir: str | None, published: str | None = None) -> Estimate:
    """The estimated seconds of running `arms` into `workdir` (None: no earlier timings) and
    their source; published: the results.json of a published run of the same setting (None: not
    used)."""
    earlier = (_recorded_seconds(arms, os.path.join(workdir, "timings.json"), False)
               if workdir else {})
    reference = _recorded_seconds(arms, published, True) if published else {}
    timings, seconds, measured, from_reference = {}, 0.0, 0, 0
    for arm in arms:
        if arm.path in earlier:
            seconds += earlier[arm.path]
        elif _is_trainer_config(arm.config):
            key = _cost_key(arm.config)
            if key not in timings:
                timings[key] = time_updates(arm.config)
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


def report(experiment, arms, workdir: str, at_published_setting: bool, echo=print) -> None:
    """The dry run of `experiment`'s planned `arms`: under the workdir's lock and after the
    check a run makes first (`runner.check_run_dirs`), write every arm's config to
    `WORKDIR/plan.json`; echo the count, `describe` and the estimate (the published run's seconds
    only `at_published_setting`: default scale, no `--set`)."""
    name, path = experiment.name, os.path.join(workdir, PLAN_FILE)
    with workdir_lock.hold(workdir, f"dry run of {name}"):
        runner.check_run_dirs(experiment, arms, workdir)
        outputs.write_json(path, {"experiment": name, "arms": {arm.path: {
            "label": arm.label, "panel": arm.panel,
            "config": outputs.json_roundtrip(arm.config.to_dict())} for arm in arms}})
    echo(f"{len(arms)} arms validated; configs in {path}")
    published = published_path(name) if at_published_setting else None
    for line in describe(arms) + [estimate(arms, workdir, published).source]:
        echo(line)
