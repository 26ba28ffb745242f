"""The declaration of an experiment: what to run and what to report, not how (`runner.py` runs it).

An experiment module declares one `Experiment`: its arms (a function of scale, seeds and `--set`
overrides that returns `Arm`s with every config checked), the loop of one arm (`run_arm`, a
resumable run: the custom graph loop of `graph_loop.py` or a Keras `fit` run), the table columns
(keys of each run's `summary`), the comparisons and verdict rules declared before any run
(`cgh_tf.statistics`), and hooks for what does not fit a table: figures and analyses.
docs/design.md §7 shows a complete one.
"""

import dataclasses
from typing import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Arm:
    """One run: `config` trained into `WORKDIR/<group>/seed<seed>`.

    group: arm name shared by all seeds (a relative path, e.g. "noise50/m3"); results are aggregated
        over the seeds of a group. label: legend / table name ("M3"). panel: figure row / table
        section the arm belongs to ("50% noise"). linestyle: matplotlib style of its curves.
        tags: the axes the arm lies on (e.g. ("width", "depth") for a model in both sweeps), for
        analyses and figures; not part of the config, so they never change a run.
    """

    group: str
    label: str
    panel: str
    seed: int
    config: ml_collections.ConfigDict
    linestyle: str = "-"
    tags: tuple = ()

    @property
    def path(self) -> str:
        """Sub-directory of the experiment workdir, `<group>/seed<seed>`."""
        return f"{self.group}/seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: `summary[key]` of every run, as mean ± sd over the seeds of an arm."""

    key: str
    header: str
    fmt: str = ".3f"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment as a declaration.

    arms(scale, seeds, overrides) -> [Arm]: every config checked (one-line ValueError) before
        anything is trained or written; seeds 0..seeds-1.
    run_arm(config, run_dir, echo) -> dict: train, resume or (finished) just read one run; the
        dict is the run's results.json and has a `summary` {key: number}.
    loop: "graph" (`graph_loop.py`, update-level control) or "fit" (Keras `fit`, `single_run.py`).
    columns: the results.md table. comparisons: (arm group, control group) pairs whose every column
        is differenced paired by seed with a 95 % CI (only the `compared` column keys, if given); contrasts: (column, control column) pairs
        differenced within every arm, paired by seed. rules: `cgh_tf.statistics.PairedRule`s whose
        arm / control are groups. comparisons and rules may be functions of the planned arms.
    figures(workdir, runs) -> [file names]; analyses(runs) -> (markdown lines, JSON dict);
    setting(runs) -> markdown lines describing the setting; progress: the column keys shown on
    each arm's progress line.
    `runs` = [(Arm, result dict)] in plan order.
    """

    name: str
    title: str
    arms: Callable
    run_arm: Callable
    columns: tuple
    loop: str = "graph"
    scales: tuple = ("small", "full")
    default_seeds: int = 3
    comparisons: tuple = ()
    compared: tuple = None
    contrasts: tuple = ()
    rules: tuple = ()
    figures: Callable = None
    analyses: Callable = None
    setting: Callable = None
    progress: tuple = ()

    def __post_init__(self):
        if self.loop not in ("graph", "fit"):
            raise ValueError(f"{self.name}: loop={self.loop!r}; allowed: graph, fit")

    def declared(self, field, arms):
        """`comparisons` / `rules` for the planned `arms` (a tuple, or a function of the arms)."""
        value = getattr(self, field)
        return tuple(value(arms) if callable(value) else value)
