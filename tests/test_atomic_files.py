"""`cgh_tf.atomic_files`: whole-or-nothing writes whose mode follows the umask (not mkstemp's 0600),
for results (`trainers.outputs.write_json`) and figures (`outputs.plot_curves`)."""

import os
import stat

import pytest

from cgh_tf.atomic_files import atomic_open, current_umask
from trainers import outputs


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_results_and_figures_get_the_mode_of_the_umask(tmp_path, umask):
    assert current_umask() == umask
    outputs.write_json(str(tmp_path / "results.json"), {"a": 1})
    outputs.plot_curves(str(tmp_path / "curves.png"), [{"loss": 1.0, "val_loss": 2.0}])
    with atomic_open(tmp_path / "data.bin", "wb") as f:
        f.write(b"x")
    for name in ("results.json", "curves.png", "data.bin"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "data.bin", "results.json"]


def test_a_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("new, half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
