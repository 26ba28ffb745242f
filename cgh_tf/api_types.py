"""Type aliases of the public API's annotations (the package is `py.typed`).

| alias       | what a parameter of that type accepts                                          |
|-------------|--------------------------------------------------------------------------------|
| `Array`     | a NumPy array or a `tf.Tensor` (shapes are stated in each docstring)           |
| `Nest`      | an `Array`, or a list / tuple / dict of them (a model's several inputs / outputs) |
| `Inputs`    | a `Nest`, or a `tf.data.Dataset` of batches                                    |
| `LossSpec`  | a Keras loss name, `keras.losses.Loss`, a function `(y_true, y_pred) -> loss`, or None (the model's compiled loss) |
| `Logs`      | the `logs` dict Keras passes to a callback (or None)                           |

NumPy, TensorFlow and Keras appear as strings: importing this module imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover -- for type checkers only
    import keras
    import numpy as np
    import tensorflow as tf

Array = Union["np.ndarray", "tf.Tensor"]
Nest = Union[Array, Sequence[Array], Mapping[str, Array]]
Inputs = Union[Nest, "tf.data.Dataset"]
LossSpec = Union[str, "keras.losses.Loss", Callable[..., Any], None]
Logs = Optional[dict]
