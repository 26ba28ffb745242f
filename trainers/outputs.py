"""What the trainer writes into a workdir besides its checkpoints, atomically: canonical JSON
(results.json, timings.json) and curves.png (files: docs/guide/trainer.md).
"""

import json
import math

import numpy as np

from cgh_tf.atomic_files import atomic_open
from trainers.config_schema import ConfigError

RESULTS_FILE = "results.json"
TIMINGS_FILE = "timings.json"
PLOT_FILE = "curves.png"


def to_json(obj) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline; a NaN, "no value", as
    null): equal objects give equal bytes."""
    return json.dumps(_nan_to_none(obj), sort_keys=True, indent=2, allow_nan=True) + "\n"


def _nan_to_none(obj):
    """`obj` with every float NaN (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def json_roundtrip(obj):
    """`obj` as it reads back from JSON (tuples become lists): for comparing with stored JSON."""
    return json.loads(to_json(obj))


def read_json(path: str, keys=()) -> dict | None:
    """The JSON object in `path`, or None if there is no such file; `ConfigError` (one line
    naming the file) unless it is a JSON object holding every key of `keys`."""
    try:
        with open(path) as f:
            content = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as error:  # not JSON, not UTF-8
        content = error
    missing = [key for key in keys if isinstance(content, dict) and key not in content]
    if isinstance(content, dict) and not missing:
        return content
    what = (f"no {', '.join(missing)}" if missing else content
            if isinstance(content, ValueError) else f"a JSON {type(content).__name__}")
    raise ConfigError(f"{path} is not a run's record ({what}); move it away or use another "
                      f"workdir")


def write_json(path: str, obj) -> None:
    """Write `obj` as canonical JSON to `path`, atomically."""
    with atomic_open(path, "w") as f:
        f.write(to_json(obj))


def history_columns(history: list) -> dict:
    """Per-epoch log dicts -> `{key: [value per epoch]}` (None where an epoch lacks the key)."""
    keys = sorted({k for logs in history for k in logs})
    return {k: [logs.get(k) for logs in history] for k in keys}


def plot_curves(path: str, history: list, title: str = "") -> None:
    """Write `curves_figure(history, title)` as a PNG to `path` (atomically)."""
    from trainers.figures import pyplot

    fig = curves_figure(history, title)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    pyplot().close(fig)


def curves_figure(history: list, title: str = ""):
    """Matplotlib figure (Agg; the caller closes it) of the per-epoch `history` (log dicts, None /
    NaN = no value): loss; accuracy (train, test, pristine, corrupted); the training batches'
    m-coherence (whole model, layers dashed) when measured, skipping epochs without a value."""
    from trainers.figures import pyplot

    plt = pyplot()
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
