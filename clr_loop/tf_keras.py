"""TensorFlow Addons' four cyclical schedules for Keras 2 users (the `tf_keras` package).

TensorFlow 2.16+ runs Keras 3 unless `TF_USE_LEGACY_KERAS=1`, when `tf.keras` is `tf_keras` (Keras 2).
Keras 2 optimizers take only Keras 2 `LearningRateSchedule`s, so this module gives the same classes as
`clr_loop.schedules` (same arguments, math, values and config) built on `tf_keras`:

    from clr_loop.tf_keras import Triangular2CyclicalLearningRate   # was: tfa.optimizers....
    optimizer = tf.keras.optimizers.SGD(Triangular2CyclicalLearningRate(1e-4, 1e-2, 2000))

Importing it registers the classes with tf_keras under clr_loop's names and TFA's (`Addons>...`), so
models saved with TFA under Keras 2 load with `tf.keras.models.load_model`. It needs `pip install
tf_keras` (the version matching TensorFlow's); without it, importing this module raises ImportError.
"""

try:
    import tf_keras
except ImportError as e:  # pragma: no cover (tested in a process without tf_keras only by hand)
    raise ImportError(
        "clr_loop.tf_keras needs the tf_keras package (Keras 2): pip install 'tf_keras~=2.21' "
        "(the version matching TensorFlow's). With Keras 3, use clr_loop.schedules"
    ) from e

from clr_loop import scale_fns
from clr_loop.schedules import cyclical as _cyclical

_PACKAGE = "clr_loop"
_LRS = tf_keras.optimizers.schedules.LearningRateSchedule


def _tf_keras_doc(cls):
    """Returns the docstring of `cls`'s tf_keras twin: `cls`'s, whose example imports from here."""
    summary, rest = cls.__doc__.split("\n", 1)
    twin = (
        f"\n    The tf_keras (Keras 2) class of `clr_loop.schedules.{cls.__name__}`:\n"
        "    the same arguments, values and config.\n"
    )
    return (summary + "\n" + twin + rest).replace("from clr_loop.schedules import", "from clr_loop.tf_keras import")


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class ScaleFunction(scale_fns.SavedFunction):
    """A custom `scale_fn` inside a tf_keras config (see `clr_loop.scale_fns.SavedFunction`).

    A tf_keras `CyclicalLearningRate` with a custom `scale_fn` puts one in its `get_config`;
    tf_keras's serializer writes it as a JSON dict, and loading it gives back the function itself.

    Args:
        fn: the callable to save.

    Example:
        >>> import tf_keras
        >>> from clr_loop.tf_keras import ScaleFunction
        >>> saved = tf_keras.saving.serialize_keras_object(ScaleFunction(abs))
        >>> saved["registered_name"], saved["config"]
        ('clr_loop>ScaleFunction', {'kind': 'import', 'module': 'builtins', 'name': 'abs'})
        >>> tf_keras.saving.deserialize_keras_object(saved) is abs
        True
    """

    keras_module = tf_keras
    unset_is_safe = False  # as tf_keras's Lambda layer: its .h5 loader sets no safe-mode scope

    @staticmethod
    def safe_mode_state():
        from tf_keras.src.saving import serialization_lib  # noqa: PLC0415 (no public accessor)

        return serialization_lib.in_safe_mode()


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class CyclicalLearningRate(_cyclical._CyclicalCore, _LRS):  # noqa: SLF001 (the shared core)
    __doc__ = _tf_keras_doc(_cyclical.CyclicalLearningRate)
    _saved_function = ScaleFunction


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class TriangularCyclicalLearningRate(_cyclical._TriangularCore, CyclicalLearningRate):  # noqa: SLF001
    __doc__ = _tf_keras_doc(_cyclical.TriangularCyclicalLearningRate)


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class Triangular2CyclicalLearningRate(_cyclical._Triangular2Core, CyclicalLearningRate):  # noqa: SLF001
    __doc__ = _tf_keras_doc(_cyclical.Triangular2CyclicalLearningRate)


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class ExponentialCyclicalLearningRate(_cyclical._ExponentialCore, CyclicalLearningRate):  # noqa: SLF001
    __doc__ = _tf_keras_doc(_cyclical.ExponentialCyclicalLearningRate)


TFA_NAMES = {
    "Addons>CyclicalLearningRate": CyclicalLearningRate,
    "Addons>TriangularCyclicalLearningRate": TriangularCyclicalLearningRate,
    "Addons>Triangular2CyclicalLearningRate": Triangular2CyclicalLearningRate,
    "Addons>ExponentialCyclicalLearningRate": ExponentialCyclicalLearningRate,
}
tf_keras.saving.get_custom_objects().update(TFA_NAMES)
# tf_keras writes a schedule inside an optimizer in its new format (class name and registered name)
# even in a .h5 file, whose loader then looks up the bare class name: register that too.
tf_keras.saving.get_custom_objects().update({cls.__name__: cls for cls in TFA_NAMES.values()})
