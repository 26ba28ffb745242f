"""One resume state per trainer run: after every epoch one `tf.train.Checkpoint` (model, optimizer
and the optimizers it wraps, `steps_trained`, the schedule's epoch, a JSON record) through
`cgh_tf.checkpoints.CheckpointStore` (docs/design.md §7, "Reliability")."""

import json
import os

import tensorflow as tf

from cgh_tf import checkpoints

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "epoch"
_RECORD_KEY = "record/.ATTRIBUTES/py_state"


class _Record(tf.train.experimental.PythonState):
    """The JSON part of the checkpoint (a dict)."""

    def __init__(self):
        self.value = {}

    def serialize(self):
        return json.dumps(self.value, sort_keys=True, allow_nan=False)

    def deserialize(self, string_value):
        self.value = json.loads(string_value)


class RunState:
    """The checkpoint of one run of a compiled `model` (optimizer built) and `schedule`
    (`EpochStepDecay` or None), keeping the newest `keep`."""

    def __init__(self, workdir: str, model, schedule=None, keep: int = 1):
        self.record = _Record()
        objects = {"model": model, "optimizer": model.optimizer, "record": self.record}
        if getattr(model, "steps_trained", None) is not None:
            objects["steps_trained"] = model.steps_trained
        if schedule is not None:
            objects["schedule_epoch"] = schedule.epoch
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.store = _store(workdir, self.checkpoint, keep)

    def save(self, epoch: int, record: dict) -> str:
        """Write the checkpoint of `epoch` completed epochs with the JSON `record`; its path
        (`checkpoints.CheckpointSaveError`, one line, if it cannot be written)."""
        self.record.value = record
        return self.store.save(int(epoch))

    def restore(self, path: str) -> dict:
        """Load the checkpoint at `path` (a prefix from `newest_intact`); its record."""
        self.store.restore(path)
        return self.record.value


def _store(workdir, checkpoint, keep=1):
    return checkpoints.CheckpointStore(os.path.join(workdir, CHECKPOINT_DIR), checkpoint, _PREFIX,
                                       keep=keep)


def list_checkpoints(workdir: str) -> list:
    """`[(epochs completed, path prefix)]` of the complete checkpoints, oldest first (unverified)."""
    return checkpoints.present(os.path.join(workdir, CHECKPOINT_DIR), _PREFIX)


def newest_intact(workdir: str):
    """`(epochs completed, path prefix)` of the newest checkpoint that reads completely, or None
    (newer damaged ones reported and moved to `checkpoints/damaged/`)."""
    return _store(workdir, None).newest_intact()


def checkpoint_path(workdir: str, epoch: int) -> str:
    """The path prefix of the checkpoint after `epoch` completed epochs."""
    return os.path.join(workdir, CHECKPOINT_DIR, f"{_PREFIX}-{int(epoch)}")


def read_record(path: str) -> dict:
    """The JSON record of the checkpoint at `path`, without loading any variable."""
    return json.loads(tf.train.load_checkpoint(path).get_tensor(_RECORD_KEY).decode())


def restore_model(path: str, model, schedule=None) -> dict:
    """Load the checkpoint at `path` into a compiled `model` and `schedule`; its record."""
    workdir = os.path.dirname(os.path.dirname(path))
    return RunState(workdir, model, schedule).restore(path)
