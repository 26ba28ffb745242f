"""trainers/noise_structure.py: the declared ordering rule by hand, the plan, and a tiny real run
of every noise kind (isolated noise: the model's output has the dummy classes)."""

import json

import pytest

from cgh_tf import statistics
from trainers import catalog
from trainers import noise_structure, runner


def test_ordering_rule_by_hand():
    rising = {"isolated": {0: .30, 1: .32, 2: .31}, "uniform": {0: .20, 1: .21, 2: .19},
              "pair": {0: .10, 1: .12, 2: .11}}
    rows, text = noise_structure._ordered(rising, noise_structure.ORDER, "s")
    assert text == "s isolated > uniform > pair: supported (every CI excludes 0 above)"
    assert [(hi, lo) for hi, lo, _ in rows] == [("isolated", "uniform"), ("uniform", "pair")]
    assert rows[0][2] == statistics.paired_difference(rising["isolated"], rising["uniform"])
    falling = {**rising, "pair": {0: .40, 1: .41, 2: .42}}
    assert noise_structure._ordered(falling, noise_structure.ORDER, "s")[1].endswith(
        "contradicted (a CI excludes 0 below)")
    flat = {**rising, "pair": {0: .25, 1: .15, 2: .20}}
    assert noise_structure._ordered(flat, noise_structure.ORDER, "s")[1].endswith("not decided "
                                                                                  "(a CI includes 0)")


def test_plan_has_every_kind_and_arm_and_refuses_overriding_them():
    arms, _ = catalog.plan("noise_structure")
    assert len(arms) == 3 * 6 * 3
    assert {a.config.noise_kind for a in arms} == {"pair", "uniform", "isolated"}
    assert {a.config.train_size for a in arms} == {4000} and {a.config.label_noise for a in arms} == {0.4}
    for field in ("noise_kind", "optimizer"):
        with pytest.raises(ValueError, match=f"{field} is set by each arm and panel"):
            catalog.plan("noise_structure", overrides={field: "sgd"})
    with pytest.raises(ValueError, match="kind 'sideways' is unknown; allowed: pair, uniform"):
        catalog.plan("noise_structure", overrides={"kinds": ("sideways",)})


@pytest.mark.slow
def test_tiny_real_run_of_every_kind(tmp_path):
    tiny = {"epochs": 1, "train_size": 200, "coherence_samples": 8, "width": 16,
            "arms": ("rm3", "ra3")}
    arms, experiment = catalog.plan("noise_structure", seeds=2, overrides=tiny)
    summary = runner.run(experiment, arms, str(tmp_path), "test", echo=lambda line: None)
    isolated = json.loads((tmp_path / "isolated/rm3/seed0/results.json").read_text())
    assert isolated["num_corrupted"] == 80 and isolated["finished"]
    assert isolated["summary"]["pairwise/corrupted_init"] == isolated["curves"]["pairwise/corrupted"][0]
    assert [v["rule"] for v in summary["verdicts"]] == [
        f"{kind}/rm3 suppresses memorisation vs {kind}/ra3" for kind in ("pair", "uniform",
                                                                          "isolated")]
    order = summary["analyses"]["order"]
    assert set(order) == {"suppression ra3 − rm3"}  # no SGD arm planned: no premise test
    assert [d["larger"] for d in order["suppression ra3 − rm3"]["differences"]] == [
        "isolated", "uniform"]
