"""Config errors that say everything at once: winsorize without c, in-batch M3 with coherence.

In process and cheap (no data, no training); the same messages through the real CLI are in
tests/test_trainer.py (`test_bad_config_exits_with_one_line_and_writes_nothing`).
"""

import ast
import json

import pytest

from configs import default, winsorize
from trainers import config_schema, outputs, single_run


def _config(**fields):
    return config_schema.apply_overrides(default.get_config(), fields)


def _apply_flags(config, changes):
    """`config` with the `--config.FIELD=VALUE (why)` strings of `in_batch_m3_changes` set."""
    fields = {}
    for change in changes:
        flag = change.split(" ", 1)[0]
        field, value = flag[len("--config."):].split("=", 1)
        fields[field] = ast.literal_eval(value)
    return config_schema.apply_overrides(config, fields)


def test_winsorize_needs_its_percentage_and_c0_stays_legal_when_spelled_out():
    with pytest.raises(config_schema.ConfigError,
                       match=r"optimizer.aggregation='winsorize' needs optimizer.winsorize_pct"):
        config_schema.validate(_config(**{"optimizer.aggregation": "winsorize"}))
    assert default.get_config().optimizer.winsorize_pct is None  # unset, not 0
    config_schema.validate(_config(**{"optimizer.aggregation": "winsorize",
                                      "optimizer.winsorize_pct": 0.0}))  # the sweep's control
    config_schema.validate(winsorize.get_config())


def test_winsorize_refuses_a_model_that_normalises_by_batch_statistics():
    with pytest.raises(config_schema.ConfigError, match=r"model.name='resnet18_cifar' normalises "
                       r"by the batch's statistics in training \(BatchNormalization\)"):
        config_schema.validate(_config(**{"optimizer.aggregation": "winsorize",
                                          "optimizer.winsorize_pct": 2.0,
                                          "model.name": "resnet18_cifar"}))
    config_schema.validate(_config(**{"optimizer.aggregation": "winsorize",
                                      "optimizer.winsorize_pct": 2.0, "model.name": "small_cnn"}))


@pytest.mark.parametrize("fields, expected", [
    ({"coherence.every": 1, "batch_size": 32},
     ["optimizer.m3_in_batch", "batch_size", "drop_remainder"]),
    ({"coherence.every": 1, "batch_size": 33, "max_train": 660},  # 660 = 20 batches: splits
     ["optimizer.m3_in_batch"]),
    ({"optimizer.m3_in_batch": True, "batch_size": 64, "max_train": 500},
     ["batch_size", "drop_remainder"]),
    ({"optimizer.name": "m5", "coherence.every": 2, "drop_remainder": True},
     ["optimizer.m3_in_batch", "batch_size"]),
    ({"coherence.every": 0}, []),  # M3 over consecutive batches: nothing to change
])
def test_in_batch_m3_changes_list_everything_and_following_them_validates(fields, expected):
    config = _config(**{"optimizer.name": "m3", **fields})
    changes = config_schema.in_batch_m3_changes(config)
    assert [c.split("=", 1)[0][len("--config."):] for c in changes] == expected
    if changes:
        with pytest.raises(config_schema.ConfigError) as error:
            config_schema.validate(config)
        assert "wants all of: " + " ".join(changes) in str(error.value)
        assert "\n" not in str(error.value)
    fixed = _apply_flags(config, changes)
    assert config_schema.in_batch_m3_changes(fixed) == []
    config_schema.validate(fixed)
    config_schema.check_data_fits(fixed, fixed.max_train or 4000)  # mnist1d: 4000 examples


def _write_finished(workdir, config_dict, epochs):
    outputs.write_json(str(workdir / outputs.RESULTS_FILE),
                       {"config": config_dict, "epochs_completed": epochs})


def test_a_workdir_of_the_old_default_c0_is_the_same_run(tmp_path):
    """Before `winsorize_pct` became unset its default was 0.0: such a finished run (or
    checkpoint) is the same run as today's default, not "a different config"."""
    config = default.get_config()
    old = outputs.json_roundtrip(config.to_dict())
    old["optimizer"]["winsorize_pct"] = 0.0
    _write_finished(tmp_path, old, config.num_epochs)
    single_run.check_workdir_holds_config(str(tmp_path), config)  # no error

    old["optimizer"]["winsorize_pct"] = 2.0  # a winsorize c = 2 run is another run
    old["optimizer"]["aggregation"] = "winsorize"
    _write_finished(tmp_path, old, config.num_epochs)
    with pytest.raises(config_schema.ConfigError, match=r"fields \['optimizer'\] differ"):
        single_run.check_workdir_holds_config(str(tmp_path), config)


def test_a_train_run_saved_with_the_removed_easy_hard_fields_is_the_same_run(tmp_path):
    """Runs saved before the easy_hard trainer mode was removed carry its `easy_hard` fields,
    which configured only that mode: a finished `make demo` arm stays the same run."""
    config = default.get_config()
    old = outputs.json_roundtrip(config.to_dict())
    old["easy_hard"] = {"probe_epochs": 2, "test_fraction": 0.5, "part": "none",
                        "learning_times_csv": None}
    _write_finished(tmp_path, old, config.num_epochs)
    single_run.check_workdir_holds_config(str(tmp_path), config)  # no error

    old["num_epochs"] = config.num_epochs + 1  # any other difference still refuses
    _write_finished(tmp_path, old, config.num_epochs)
    with pytest.raises(config_schema.ConfigError, match=r"fields \['num_epochs'\] differ"):
        single_run.check_workdir_holds_config(str(tmp_path), config)


def test_migrate_maps_version_1_forward_and_keeps_every_other_spelling():
    winsorized = json.loads(json.dumps(winsorize.get_config().to_dict()))
    winsorized["optimizer"]["winsorize_pct"] = 0.0  # winsorize at c = 0 is not the mean
    assert config_schema.migrate(winsorized, 1) == winsorized
    assert config_schema.migrate({"dataset": "mnist1d"}, 1) == {"dataset": "mnist1d"}
    old = outputs.json_roundtrip(default.get_config().to_dict())
    old["optimizer"]["winsorize_pct"] = 0.0
    old["easy_hard"] = {"probe_epochs": 2}
    assert config_schema.migrate(old, 1) == outputs.json_roundtrip(default.get_config().to_dict())
    assert config_schema.saved_config({"config": old}) == config_schema.migrate(old, 1)


def test_a_run_saved_at_the_current_version_compares_by_plain_equality(tmp_path):
    """A version-2 record is not migrated: its c = 0 under the mean is another spelling than
    today's unset c, so such a workdir is refused (only version-1 records had c = 0 as default)."""
    config = default.get_config()
    saved = outputs.json_roundtrip(config.to_dict())
    saved["optimizer"]["winsorize_pct"] = 0.0
    outputs.write_json(str(tmp_path / outputs.RESULTS_FILE),
                       {"config": saved, "config_version": config_schema.CONFIG_VERSION,
                        "epochs_completed": config.num_epochs})
    with pytest.raises(config_schema.ConfigError, match=r"fields \['optimizer'\] differ"):
        single_run.check_workdir_holds_config(str(tmp_path), config)


@pytest.mark.parametrize("version", [config_schema.CONFIG_VERSION + 1, 0, "2"])
def test_a_config_of_an_unknown_version_is_refused_in_one_line(tmp_path, version):
    config = default.get_config()
    outputs.write_json(str(tmp_path / outputs.RESULTS_FILE),
                       {"config": outputs.json_roundtrip(config.to_dict()),
                        "config_version": version, "epochs_completed": config.num_epochs})
    with pytest.raises(config_schema.ConfigError, match=r"^workdir .* holds the finished results of a run "
                       r"with config_version=.*, which this cgh_tf does not read \(versions 1 to "
                       r"\d+\); use a newer cgh_tf or another workdir$"):
        single_run.check_workdir_holds_config(str(tmp_path), config)


def test_results_carry_the_config_version():
    """What a run writes (results.json, and the same record in every checkpoint) names its
    version, so a later schema change can migrate it."""
    import numpy as np

    from cgh_tf import data

    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    dataset = data.from_arrays(x, y, x, y)
    results = single_run.make_results(default.get_config(), dataset, [])
    assert results["config_version"] == config_schema.CONFIG_VERSION
    assert config_schema.saved_config(results) == results["config"]


@pytest.mark.parametrize("name, epochs", [("rm5", 1), ("ra9", 2), ("m5", 1),
                                          ("m3", 1)])  # m3 with groups=7 below
def test_a_run_that_would_make_no_update_is_refused_before_training(tmp_path, name, epochs):
    """200 examples in batches of 64: 4 batches an epoch. RM / RA over a window of k batches
    update first after k batches, M3 over k consecutive batches after k: with fewer batches in
    the whole run it would train nothing and report it as trained (was: accepted; rm200 ran
    158 s for no update)."""
    from trainers import train

    config = _config(optimizer={**_config().optimizer.to_dict(), "name": name, "groups": 7},
                     max_train=200, max_test=50, num_epochs=epochs)
    with pytest.raises(config_schema.ConfigError) as error:
        train.dry_run(config, str(tmp_path / "run"), echo=lambda line: None)
    assert f"optimizer.name={name!r} makes no update in this run" in str(error.value)
    assert f"{epochs} epochs × 4 batches" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, epochs, updates", [("rm5", 2, 4), ("m5", 2, 1), ("m4", 1, 1),
                                                   ("sgd", 1, 4), ("ra3", 1, 2)])
def test_a_run_with_an_update_passes_and_counts_them(name, epochs, updates):
    config = _config(optimizer={**_config().optimizer.to_dict(), "name": name},
                     max_train=200, num_epochs=epochs)
    config_schema.check_data_fits(config, 200)
    assert config_schema.updates(config, 200, epochs) == updates
