"""easy_hard (issue 24): the partition with its equal-size random controls, and a tiny real run
checked against an independent eager probe and brute-force per-example gradients."""

import hashlib
import json
import os

import numpy as np
import pytest

from trainers import beyond_common, config_schema, easy_hard, graph_loop, models, runner

TINY = {"dataset": "mnist1d", "epochs": 2, "probe_epochs": 1, "width": 16, "depth": 1,
        "batch_size": 256, "coherence_samples": 24}


def test_partition_gives_equal_size_random_controls_from_the_same_pools():
    easy = np.random.default_rng(0).random(101) < 0.3
    parts = easy_hard.partition(easy, seed=4, test_fraction=0.5)
    (e_tr, e_te), (h_tr, h_te) = parts["easy"], parts["hard"]
    assert set(e_tr) | set(e_te) == set(np.flatnonzero(easy))
    assert set(h_tr) | set(h_te) == set(np.flatnonzero(~easy))
    assert len(e_te) == int(np.floor(0.5 * easy.sum() + 0.5))
    (r1_tr, r1_te), (r2_tr, r2_te) = parts["random_easy_size"], parts["random_hard_size"]
    assert (len(r1_tr), len(r1_te), len(r2_tr), len(r2_te)) == (len(e_tr), len(e_te), len(h_tr),
                                                                len(h_te))
    assert set(r1_tr) | set(r2_tr) == set(e_tr) | set(h_tr)   # the same training pool
    assert set(r1_te) | set(r2_te) == set(e_te) | set(h_te)   # the same test pool
    every = np.concatenate([e_tr, e_te, h_tr, h_te])
    assert len(every) == len(set(every)) == 101
    assert not set(r1_tr) & set(r2_tr) and not set(r1_te) & set(r2_te)
    assert 0 < len(set(r1_tr) & set(e_tr)) < len(e_tr)       # random, not the easy part again
    again = easy_hard.partition(easy, seed=4, test_fraction=0.5)
    assert all(np.array_equal(a, b) for p in parts for a, b in zip(parts[p], again[p]))


def test_partition_refuses_a_probe_that_leaves_a_part_too_small():
    with pytest.raises(ValueError, match="the probe left the hard part with 0 training and 0 "
                       "test examples .100 of 100 examples easy.; .* change probe_epochs"):
        easy_hard.partition(np.ones(100, bool), seed=0, test_fraction=0.5)


def _eager_probe(config, x, y):
    """The probe of a run, recomputed in eager mode with a plain GradientTape SGD loop."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(config.seed))
    model = models.mlp(config, x.shape[1:], 10)
    initial = model.get_weights()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for epoch in range(config.probe_epochs):
        perm = graph_loop.epoch_permutation(config.seed, epoch, len(x))
        for k in range(0, len(x), config.batch_size):
            idx = perm[k:k + config.batch_size]
            with tf.GradientTape() as tape:
                loss = loss_fn(y[idx], model(x[idx], training=True))
            for v, g in zip(model.trainable_variables,
                            tape.gradient(loss, model.trainable_variables)):
                v.assign_sub(config.learning_rate * g)
    easy = np.argmax(model(x, training=False).numpy(), -1) == y
    model.set_weights(initial)
    return easy, model


def _pairwise_coherence_brute_force(model, x, y):
    """(r − 1)/(m − 1) from per-example gradients in float64, one GradientTape per example."""
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i:i + 1], model(x[i:i + 1], training=False))
        grads.append(np.concatenate([np.ravel(g.numpy()).astype(np.float64)
                                     for g in tape.gradient(loss, model.trainable_variables)]))
    g = np.array(grads)
    q, s = np.sum(g * g), np.sum(g.sum(0) ** 2)
    return (s / q - 1) / (len(g) - 1)


def test_easy_hard_tiny_run_against_an_eager_probe_and_brute_force_coherence(tmp_path):
    from cgh_tf import data

    experiment = easy_hard.EXPERIMENT
    arms = runner.plan(experiment, "small", 1, TINY)
    assert [a.group for a in arms] == [f"mnist1d/{p}" for p in easy_hard.PARTS]
    summary = runner.run(experiment, arms, str(tmp_path), "test", echo=None)
    assert summary["analyses"] == {"probe_split_identical": True}
    ds = data.load("mnist1d")
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    config = arms[0].config
    easy, model = _eager_probe(config, x, y)
    parts = easy_hard.partition(easy, 0, config.test_fraction)
    for part in easy_hard.PARTS:
        result = json.loads((tmp_path / "mnist1d" / part / "seed0" / "results.json").read_text())
        assert result["easy_mask_sha256"] == hashlib.sha256(np.packbits(easy).tobytes()).hexdigest()
        assert result["summary"]["n_train"] == len(parts[part][0])
        assert result["summary"]["n_easy"] == int(easy.sum())
        assert 0 <= result["summary"]["test_on_easy"] <= 1
    sample = beyond_common.sample(parts["hard"][0], 24, 0, 1)
    hard = json.loads((tmp_path / "mnist1d" / "hard" / "seed0" / "results.json").read_text())
    assert hard["summary"]["pairwise_coherence_init"] == pytest.approx(
        _pairwise_coherence_brute_force(model, x[sample], y[sample]), rel=1e-4, abs=1e-6)
    assert hard["summary"]["test_cross"] == hard["summary"]["test_on_easy"]
    assert len(summary["verdicts"]) == len(easy_hard.RULES)
    assert (tmp_path / "easy_hard_mnist1d.png").stat().st_size > 0
    assert "Probe split identical in the arms of every seed: yes" in (
        tmp_path / "results.md").read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"part": "medium"}, "part='medium' is unknown; allowed: easy, hard, random_easy_size"),
    ({"test_fraction": 1.0}, r"test_fraction=1.0 must be in \(0, 1\)"),
    ({"probe_epochs": 0}, "probe_epochs=0 must be an int >= 1"),
])
def test_easy_hard_rejects_bad_configs_before_any_run(overrides, message, tmp_path):
    config = config_schema.apply_overrides(easy_hard.arms("small", 1)[0].config, overrides)
    with pytest.raises(ValueError, match=message):
        easy_hard.check_config(config)
    with pytest.raises(ValueError, match="dataset='digits' is not available for easy_hard"):
        runner.plan(easy_hard.EXPERIMENT, "small", 1, {"dataset": "digits"})
    assert not os.listdir(tmp_path)
