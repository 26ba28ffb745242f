"""Easy vs hard examples (2003.07422) against random parts of equal size: a probe splits the
examples, one arm per part trains from the probe's initial weights and is tested on every test
part. docs/experiments/intro/easy_hard.md; design §7.2."""

import hashlib

import numpy as np

from cgh_tf.statistics import PairedRule
from configs import easy_hard as easy_hard_config

from . import beyond_common as common
from . import config_schema
from . import figures as fig
from . import graph_loop
from . import models
from . import per_example_runs
from .experiment import Column, Experiment

PARTS = easy_hard_config.PARTS
PARTNER = {"easy": "hard", "hard": "easy", "random_easy_size": "random_hard_size",
           "random_hard_size": "random_easy_size"}


def partition(easy, seed, test_fraction):
    """{part of `PARTS`: (train, test) sorted index arrays} from the [n] bool `easy` mask: easy /
    hard each split with round(test_fraction · size) test examples; the random parts split the
    union of both training (test) parts into easy's and hard's sizes. ValueError (one line) if a
    part has fewer than 2 training or 1 test example."""
    rng = np.random.default_rng([int(seed), 4099])

    def split(idx, first):   # (sorted first `first` of a permutation, sorted rest)
        order = rng.permutation(idx)
        return np.sort(order[:first]), np.sort(order[first:])

    parts = {}
    for name, mask in (("easy", easy), ("hard", ~easy)):
        idx = np.flatnonzero(mask)
        test, train = split(idx, int(np.floor(test_fraction * len(idx) + 0.5)))
        parts[name] = (train, test)
    halves = [split(np.concatenate([parts["easy"][k], parts["hard"][k]]), len(parts["easy"][k]))
              for k in (0, 1)]  # k = 0: the training pool, 1: the test pool
    parts["random_easy_size"], parts["random_hard_size"] = zip(*halves)
    for name, (train, test) in parts.items():
        common.require(len(train) >= 2 and len(test) >= 1, (
            f"the probe left the {name} part with {len(train)} training and {len(test)} test "
            f"examples ({int(easy.sum())} of {len(easy)} examples easy); a part needs at least 2 "
            "and 1: change probe_epochs or test_fraction"))
    return parts


def _setup(config, run_dir, echo):
    from cgh_tf import coherence, data

    ds = data.load(config.dataset)
    x, y = common.arrays(ds.train)
    model = models.mlp(config, ds.input_shape, ds.num_classes)
    initial = model.get_weights()
    probe = per_example_runs.build(config, x, y, ds.input_shape, ds.num_classes, model=model)
    graph_loop.epoch_advancer(probe.train_epoch, config.seed, len(x))(0, int(config.probe_epochs))
    easy = probe.predict(x, y)[0] == y
    model.set_weights(initial)
    parts = partition(easy, config.seed, config.test_fraction)
    train_idx, own_test = parts[config.part]
    sample = common.sample(train_idx, config.coherence_samples, config.seed, 1)
    at_init = coherence.measure(model, x[sample], y[sample], loss=probe.loss_fn,
                                batch_size=len(sample))
    run = per_example_runs.build(config, x[train_idx], y[train_idx], ds.input_shape,
                                 ds.num_classes, model=model)
    tests = {"test_own": own_test, "test_cross": parts[PARTNER[config.part]][1],
             "test_on_easy": parts["easy"][1], "test_on_hard": parts["hard"][1],
             "train_accuracy": train_idx}

    def log(epoch):
        correct = run.predict(x, y)[0] == y
        return {"epoch": epoch, "step": epoch,
                **{key: float(correct[idx].mean()) for key, idx in tests.items()}}

    def summarize(curves):
        return {**{key: curves[key][-1] for key in tests}, "n_train": len(train_idx),
                "n_easy": int(easy.sum()), "pairwise_coherence_init": at_init.pairwise_coherence,
                "m_coherence_init": at_init.m_coherence}

    return graph_loop.Training(
        run.model, run.optimizer, log=log, summarize=summarize,
        extra={"easy_mask_sha256": hashlib.sha256(np.packbits(easy).tobytes()).hexdigest()},
        **graph_loop.epoch_schedule(run.train_epoch, config, len(train_idx)))


def check_config(config):
    """`per_example_runs.check_config` plus the part, the probe and the split."""
    need = common.require
    per_example_runs.check_config(config, ("probe_epochs", "coherence_samples"))
    common.require_one_of(config, "part", PARTS)
    need(isinstance(config.test_fraction, float) and 0 < config.test_fraction < 1,
         f"test_fraction={config.test_fraction!r} must be in (0, 1)")
    need(all(config_schema.is_int(e, 0) for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be ints >= 0")


def arms(scale="small", seeds=3, overrides=None):
    """One arm per dataset and part (`PARTS`)."""
    return [arm for dataset, base in common.dataset_bases(
        easy_hard_config, scale, dict(overrides or {}), "easy_hard") for part in PARTS
        for arm in common.seeded_arms(f"{dataset}/{part}", f"{dataset}, {part.replace('_', ' ')}",
                                      dataset, config_schema.apply_overrides(base, {"part": part}),
                                      seeds, check_config)]


# (name, metric, part, control part, prediction): declared before the runs
RULES = (
    ("easy examples generalise to each other more than a random split of equal size",
     "test_own", "easy", "random_easy_size", "higher"),
    ("hard examples generalise to each other less than a random split of equal size",
     "test_own", "hard", "random_hard_size", "lower"),
    ("on the same easy test examples, training on easy beats random examples of equal number",
     "test_on_easy", "easy", "random_easy_size", "higher"),
    ("cross: training on easy transfers to hard test examples less than random of equal number",
     "test_on_hard", "easy", "random_easy_size", "lower"),
    ("cross: training on hard transfers to easy test examples less than random of equal number",
     "test_on_easy", "hard", "random_hard_size", "lower"),
    ("on the same hard test examples, training on hard vs random examples of equal number",
     "test_on_hard", "hard", "random_hard_size", None),
    ("the easy part is more coherent at initialisation than a random part of equal size",
     "pairwise_coherence_init", "easy", "random_easy_size", "higher"),
    ("the hard part is less coherent at initialisation than a random part of equal size",
     "pairwise_coherence_init", "hard", "random_hard_size", "lower"),
)


def rules(arms_):
    return [PairedRule(f"{dataset}: {name}", metric, f"{dataset}/{part}", f"{dataset}/{control}",
                       prediction)
            for dataset in dict.fromkeys(a.panel for a in arms_)
            for name, metric, part, control, prediction in RULES]


def comparisons(arms_):
    return [pair[:2] for pair in common.planned_pairs(arms_, (
        ("easy", "random_easy_size"), ("hard", "random_hard_size"), ("easy", "hard")))]


COLUMNS = (
    Column("n_train", "training examples", ".0f"),
    Column("pairwise_coherence_init", "pairwise coherence at init", ".4f"),
    Column("test_own", "acc, own test part"),
    Column("test_cross", "acc, partner's test part"),
    Column("test_on_easy", "acc, easy test part"),
    Column("test_on_hard", "acc, hard test part"),
    Column("train_accuracy", "train acc (last)"),
)


def analyses(runs):
    """Whether the probe gave the same easy set to the four arms of every (dataset, seed)."""
    digests = {}
    for arm, result in runs:
        digests.setdefault((arm.panel, arm.seed), set()).add(result.get("easy_mask_sha256"))
    same = all(len(d) == 1 for d in digests.values())
    return ([f"Probe split identical in the arms of every seed: {'yes' if same else 'NO'}.", ""],
            {"probe_split_identical": same})


def setting(runs):
    c = runs[0][1]["config"]
    sizes = {arm.group: result["summary"]["n_train"] for arm, result in runs if arm.seed == 0}
    return [f"MLP {c['depth']} × {c['width']} ReLU, plain SGD lr {c['learning_rate']}, batch "
            f"{c['batch_size']}; probe {c['probe_epochs']} epochs on the whole clean training "
            f"set; parts trained {c['epochs']} epochs from the probe's initial weights; "
            f"{c['test_fraction']:.0%} of easy and of hard held out. Training sizes (seed 0): "
            + ", ".join(f"{g} {n}" for g, n in sizes.items()) + ". Pairwise coherence: "
            f"(r − 1)/(m − 1) of at most {c['coherence_samples']} training examples of the "
            "part at initialisation. Accuracies at the last epoch.", ""]


def figures(workdir, runs):
    return [fig.bars(workdir, f"easy_hard_{dataset}.png", chosen, (
        ("test_on_easy", "acc, easy test part"), ("test_on_hard", "acc, hard test part"),
        ("test_own", "acc, own test part"),
        ("pairwise_coherence_init", "pairwise coherence at init")),
        f"Easy / hard and their random controls, {dataset}")
        for dataset, chosen in fig.per_dataset(runs)]


EXPERIMENT = Experiment(
    name="easy_hard", default_seeds=5,
    title="Easy vs hard examples against random splits of equal size, with cross-evaluation",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config), columns=COLUMNS, loop="graph",
    comparisons=comparisons,
    compared=("test_own", "test_on_easy", "test_on_hard", "pairwise_coherence_init"),
    rules=rules, figures=figures, analyses=analyses, setting=setting,
    progress=("n_train", "test_own", "test_on_easy", "test_on_hard"))
