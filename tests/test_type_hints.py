"""Every public function, class and method of cgh_tf's public modules is annotated (the package is
`py.typed`), and every annotation names something real (`typing.get_type_hints` resolves it)."""

import importlib
import inspect
import os
import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf

# What `import cgh_tf` exports (its lazily imported submodules and classes), plus the public
# modules documented in docs/reference/ or named by the API guides.
PUBLIC_MODULES = tuple(sorted(set(cgh_tf._SUBMODULES) | {"aggregators", "alignment", "streaming"}))
# Annotations may name these without the module importing them at run time (TYPE_CHECKING).
NAMESPACE = {"np": np, "tf": tf, "keras": keras}


def _public(module):
    """`(name, function or class)` defined in `module` and not private."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
            yield name, obj


def _callables(name, obj):
    """`(qualified name, function, needs a return annotation)` of a public function, or of the
    public methods (and `__init__`, properties) a class defines itself."""
    if inspect.isfunction(obj):
        yield name, obj, True
        return
    for attribute, value in vars(obj).items():
        if attribute.startswith("_") and attribute != "__init__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value):
            yield f"{name}.{attribute}", value, attribute != "__init__"


def missing_annotations(function, needs_return=True) -> list:
    """Parameter names (and "return") of `function` without an annotation; self / cls exempt."""
    signature = inspect.signature(function)
    missing = [p for i, (p, parameter) in enumerate(signature.parameters.items())
               if parameter.annotation is inspect.Parameter.empty
               and not (i == 0 and p in ("self", "cls"))]
    if needs_return and signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def _unannotated(module_name):
    module = importlib.import_module(f"cgh_tf.{module_name}")
    found = []
    for name, obj in _public(module):
        for qualified, function, needs_return in _callables(name, obj):
            missing = missing_annotations(function, needs_return)
            if missing:
                found.append(f"cgh_tf.{module_name}.{qualified}: {', '.join(missing)}")
            typing.get_type_hints(function, globalns={**NAMESPACE, **vars(module)})
    return found


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_callable_is_annotated(module_name):
    assert _unannotated(module_name) == []


def test_the_check_finds_a_missing_annotation():
    def partly(a: int, b, *args, c: str = "", **kwargs) -> None:
        del a, b, args, c, kwargs

    def no_return(self, a: int):
        del a

    assert missing_annotations(partly) == ["b", "args", "kwargs"]
    assert missing_annotations(no_return) == ["return"]
    assert missing_annotations(no_return, needs_return=False) == []


def test_the_package_is_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(cgh_tf.__file__), "py.typed"))
    assert {"coherence", "training", "optimizers", "per_example", "data"} <= set(PUBLIC_MODULES)
