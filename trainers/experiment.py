"""The declaration of an experiment: what to run and report, not how (`runner.py` runs it; the
fields and a complete example: docs/design.md §7.0)."""

import dataclasses
from typing import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Arm:
    """One run: `config` trained into `WORKDIR/<group>/seed<seed>`; the seeds of a group are
    aggregated; `tags`: the axes the arm lies on (for analyses and figures, not in the config)."""

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
    """An experiment as a declaration; what each field means: docs/design.md §7.0."""

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
