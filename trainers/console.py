"""The console scripts `cgh-train` and `cgh-reproduce` of an installed cgh_tf (`trainers/` and
`configs/` install as `cgh_tf.trainers` / `cgh_tf.configs`): a script makes the names `trainers` and
`configs` refer to those packages in its process, then runs the module as `__main__`;
`--config=NAME` (no path separator, no `.py`) names a shipped config, e.g. `--config=default`.
Every binary parses its flags with `parse_flags`.
"""

import importlib
import importlib.resources
import os
import runpy
import sys

from absl import flags

PACKAGE = __name__.rpartition(".")[0]  # "trainers" in the repository, "cgh_tf.trainers" installed
CONFIGS = PACKAGE.rpartition(".")[0] + ".configs" if "." in PACKAGE else "configs"


def alias_repository_names() -> None:
    """`trainers` and `configs` refer to this installation's packages (no-op in the repository)."""
    for name, package in (("trainers", PACKAGE), ("configs", CONFIGS)):
        if name != package:
            sys.modules[name] = importlib.import_module(package)


def shipped_config_path(name: str) -> str | None:
    """The path of shipped config `name` ("default" -> .../configs/default.py), or None."""
    if os.sep in name or "/" in name or name.endswith(".py"):
        return None
    stem, colon, argument = name.partition(":")  # ml_collections' "file.py:argument"
    path = os.path.join(os.fspath(importlib.resources.files(CONFIGS)), f"{stem}.py")
    return path + colon + argument if os.path.isfile(path) else None


def resolve_config_flags(argv: list[str]) -> list[str]:
    """`argv` with `--config=NAME` / `--config NAME` of a shipped config replaced by its path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            name = arg[len("--config="):]
            out[i] = f"--config={shipped_config_path(name) or name}"
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = shipped_config_path(out[i + 1]) or out[i + 1]
    return out


def parse_flags(argv, parse=None):
    """`app.run`'s flags_parser of every binary: absl's parsing (or `parse(argv)`, a binary's own
    wrapper of it); a usage error (unknown flag, bad value, missing required flag, an argument
    that is not a flag) exits with status 1 and one line `error: ...` (absl prints two)."""
    try:
        parsed = (parse or flags.FLAGS)(argv)
    except flags.Error as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0].strip()}")
    if len(parsed) > 1:
        sys.exit(f"error: unexpected arguments {parsed[1:]}; every option is a --flag")
    return parsed


def _run(module: str) -> None:
    alias_repository_names()
    sys.argv = resolve_config_flags(sys.argv)
    runpy.run_module(f"trainers.{module}", run_name="__main__", alter_sys=True)


def train() -> None:
    """`cgh-train`: `python -m trainers.train` (flags as documented there)."""
    _run("train")


def reproduce() -> None:
    """`cgh-reproduce`: `python -m trainers.reproduce` (flags as documented there)."""
    _run("reproduce")
