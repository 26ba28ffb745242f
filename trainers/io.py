"""Everything the trainer writes into a workdir, each file written atomically (temp file + os.replace).

| path (in the workdir)          | written                 | content                                        |
|--------------------------------|-------------------------|------------------------------------------------|
| `checkpoints/epoch-NNNN.npz`   | after every epoch       | model weights, optimizer variables, state JSON |
| `tensorboard/{train,validation}` | by keras TensorBoard  | epoch scalars (see `trainers/train.py`)        |
| `results.json`                 | at the end              | config, per-epoch history, final figures; no wall-clock values |
| `timings.json`                 | at the end              | wall-clock seconds of this invocation          |
| `curves.png`                   | at the end              | loss, accuracy and (if measured) batch m-coherence curves (matplotlib Agg) |

A checkpoint is one `.npz` file: arrays `model/00000...` (in `model.weights` order),
`optimizer/00000...` (in `optimizer_variables(optimizer)` order) and `state`, a JSON string with
`{"epoch": epochs completed, "history": [per-epoch logs], "config": config dict}`.
"""

import contextlib
import glob
import json
import math
import os
import re
import tempfile

import keras
import numpy as np

CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
TIMINGS_FILE = "timings.json"
PLOT_FILE = "curves.png"
_CHECKPOINT_RE = re.compile(r"^epoch-(\d+)\.npz$")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """Open a temp file next to `path`; on success fsync it and os.replace it onto `path`.

    On an exception (or a kill) `path` keeps its previous content and the temp file is removed
    (or, after a kill, left as `.<name>.tmp-*`, which readers ignore).
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def to_json(obj) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline): equal objects give equal bytes.

    A float NaN ("no value", see `trainers/train.py`) is written as `null`, which every JSON reader
    accepts and which reads back as None.
    """
    return json.dumps(_nan_to_none(obj), sort_keys=True, indent=2, allow_nan=True) + "\n"


def _nan_to_none(obj):
    """`obj` with every float NaN (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):  # also np.float64
        return None if math.isnan(obj) else obj
    if isinstance(obj, np.floating):
        return None if np.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def json_roundtrip(obj):
    """`obj` as it reads back from JSON (tuples become lists): for comparing with stored JSON."""
    return json.loads(to_json(obj))


def write_json(path: str, obj) -> None:
    """Write `obj` as canonical JSON to `path`, atomically."""
    with atomic_open(path, "w") as f:
        f.write(to_json(obj))


def optimizer_variables(optimizer) -> list:
    """All state variables of `optimizer` and of any Keras optimizer it wraps (deduplicated, stable order).

    Wrappers (M3, RM3, LossScaleOptimizer, ...) may keep the inner optimizer's variables out of their
    own `.variables`; this walks attributes that are Keras optimizers, in attribute-definition order.
    """
    found, seen = [], set()

    def visit(opt, depth=0):
        if id(opt) in seen or depth > 4:
            return
        seen.add(id(opt))
        for variable in opt.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
        for value in vars(opt).values():
            if isinstance(value, keras.optimizers.Optimizer):
                visit(value, depth + 1)

    visit(optimizer)
    return found


def checkpoint_path(workdir: str, epoch: int) -> str:
    """Path of the checkpoint taken after `epoch` completed epochs."""
    return os.path.join(workdir, CHECKPOINT_DIR, f"epoch-{epoch:04d}.npz")


def list_checkpoints(workdir: str) -> list:
    """`[(epochs_completed, path), ...]` of the complete checkpoints in `workdir`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(workdir, CHECKPOINT_DIR, "epoch-*.npz")):
        match = _CHECKPOINT_RE.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(workdir, model, optimizer, state: dict, keep: int = 1) -> str:
    """Write the checkpoint for `state["epoch"]` atomically; delete all but the newest `keep`."""
    os.makedirs(os.path.join(workdir, CHECKPOINT_DIR), exist_ok=True)
    arrays = {f"model/{i:05d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    for i, variable in enumerate(optimizer_variables(optimizer)):
        arrays[f"optimizer/{i:05d}"] = keras.ops.convert_to_numpy(variable)
    arrays["state"] = np.array(to_json(state))
    path = checkpoint_path(workdir, state["epoch"])
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    for _, old in list_checkpoints(workdir)[:-keep]:
        os.remove(old)
    return path


def read_checkpoint_state(path: str) -> dict:
    """The JSON state (`epoch`, `history`, `config`) of a checkpoint, without loading weights."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["state"]))


def restore_checkpoint(path: str, model, optimizer) -> dict:
    """Load weights and optimizer variables from `path` into built `model`/`optimizer`; return the state.

    Raises ValueError if the checkpoint does not match the model/optimizer (count or shapes).
    """
    with np.load(path, allow_pickle=False) as f:
        model_arrays = [f[k] for k in sorted(k for k in f.files if k.startswith("model/"))]
        opt_arrays = [f[k] for k in sorted(k for k in f.files if k.startswith("optimizer/"))]
        state = json.loads(str(f["state"]))
    _assign_all("model", model.weights, model_arrays, path)
    _assign_all("optimizer", optimizer_variables(optimizer), opt_arrays, path)
    return state


def _assign_all(what, variables, arrays, path):
    if len(variables) != len(arrays):
        raise ValueError(f"checkpoint {path} holds {len(arrays)} {what} variables but the {what} "
                         f"has {len(variables)}: it was written by a different {what}")
    for variable, array in zip(variables, arrays):
        if tuple(variable.shape) != array.shape:
            raise ValueError(f"checkpoint {path}: {what} variable {variable.path} has shape "
                             f"{tuple(variable.shape)} but the checkpoint holds {array.shape}")
        variable.assign(array)


def history_columns(history: list) -> dict:
    """Per-epoch list of log dicts -> `{key: [value per epoch]}` (None where an epoch lacks the key)."""
    keys = sorted({k for logs in history for k in logs})
    return {k: [logs.get(k) for logs in history] for k in keys}


def plot_curves(path: str, history: list, title: str = "") -> None:
    """Write `curves_figure(history, title)` as a PNG to `path` (atomically)."""
    fig = curves_figure(history, title)  # selects the Agg backend before pyplot is imported
    from matplotlib import pyplot as plt

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def curves_figure(history: list, title: str = ""):
    """Matplotlib figure (Agg) of the per-epoch `history` (list of log dicts, None / NaN = no value).

    Panels: loss (train / test); accuracy (train, test, pristine, corrupted); and, when `m_coherence`
    has a value in some epoch (`coherence.every > 0`), the m-coherence of the training batches
    (`m_coherence`, and `m_coherence/<layer>` dashed), one marker per epoch with a measurement
    (epochs without one are skipped, not drawn as 0). The caller closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    columns = history_columns(history)
    epochs = np.arange(1, len(history) + 1)

    def values(key):
        return np.array([np.nan if v is None else v for v in columns[key]], dtype=float)

    # (y label, [(history key, legend label, matplotlib style)], sparse: skip missing epochs)
    panels = [
        ("loss", [("loss", "train (running)", {}), ("val_loss", "test", {})], False),
        ("accuracy", [("accuracy", "train (running)", {}), ("val_accuracy", "test", {}),
                      ("pristine_accuracy", "pristine train (vs training label)", {}),
                      ("corrupted_accuracy", "corrupted train (vs training label)", {})], False),
    ]
    if "m_coherence" in columns and np.isfinite(values("m_coherence")).any():
        marked = {"marker": "o", "markersize": 3}
        layers = sorted(k for k in columns if k.startswith("m_coherence/"))
        panels.append(("m-coherence (training batches)",
                       [("m_coherence", "whole model", marked)]
                       + [(k, k[len("m_coherence/"):], {**marked, "linestyle": "--"})
                          for k in layers], True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharex=True)
    for ax, (ylabel, curves, sparse) in zip(axes, panels):
        for key, label, style in curves:
            if key in columns:
                y = values(key)
                kept = np.isfinite(y) if sparse else np.ones(len(y), bool)
                ax.plot(epochs[kept], y[kept], label=label, **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
