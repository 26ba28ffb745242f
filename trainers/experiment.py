"""The declaration of an experiment: what to run and report, not how (`runner.py` runs it;
docs/design.md §7.0 shows a complete one)."""

import dataclasses
from typing import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Arm:
    """One run: `config` trained into `WORKDIR/<group>/seed<seed>`.

    group: arm name shared by its seeds (a relative path, e.g. "noise50/m3"), aggregated over
    them; label: legend / table name; panel: figure row / table section; linestyle: matplotlib
    style; tags: the axes the arm lies on, for analyses and figures (not in the config).
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
    """An experiment as a declaration (`runs` = [(Arm, result dict)] in plan order).

    arms(scale, seeds, overrides) -> [Arm], every config checked (one-line ValueError);
    run_arm(config, run_dir, echo) -> the run's results.json dict (with a `summary`): train,
    resume or read one run; loop: "graph" (`graph_loop.py`) or "fit" (Keras `fit`);
    columns: the table; comparisons: (arm group, control group) pairs differenced paired by seed
    on every column (or on the `compared` keys); contrasts: (column, control column) pairs within
    every arm; rules: `cgh_tf.statistics` rules on groups (comparisons and rules may be functions
    of the planned arms); figures(workdir, runs) -> [file names]; analyses(runs) -> (markdown
    lines, JSON dict); setting(runs) -> markdown lines; progress: column keys of the arm's line.
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
