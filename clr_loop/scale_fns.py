"""A cyclical schedule's `scale_fn`: the named modes as callables, recognising them, saving the others.

TensorFlow Addons' `CyclicalLearningRate` took a Python `scale_fn`. clr_loop computes its three named
modes ("triangular", "triangular2", "exp_range") itself, in float64, and writes them to JSON by name.
This module:

- gives each named mode a callable (`ModeScale`), so `Triangular2CyclicalLearningRate(...).scale_fn(3)`
  is 0.25 as in TFA;
- recognises a Python function that *is* a named mode (`named_mode`): its code is, instruction for
  instruction, one of the usual ways of writing it (the tutorial's `lambda x: 1/(2.**(x-1))`, TFA's own
  `lambda x: gamma**x`, ...) and it gives that mode's values on a probe. Only the code decides; the
  probe guards against a rebound global. A function that merely agrees on some steps is not recognised;
- saves any other callable the way Keras saves a `Lambda` layer's Python function (`SavedFunction`):
  its bytecode, defaults and closure (plus the modules and values of the globals it reads), loaded only
  with `safe_mode=False`, as Keras does; a function importable by module and name, or a Keras-
  serializable object, is saved by reference instead.
"""

import builtins
import codecs
import importlib
import marshal
import math
import numbers
import types
import warnings

import numpy as np

MODES = ("triangular", "triangular2", "exp_range")


class ModeScale:
    """A named mode's scale function, as TFA's subclasses exposed it (`scale_fn`).

    Called with the cycle number or the step `x` (a Python number, numpy array or tensor), returns the
    amplitude factor: 1.0 ("triangular"), `1 / 2**(x - 1)` ("triangular2") or `gamma**x` ("exp_range"),
    as a Python float for a Python number, in `x`'s float dtype for an array or tensor (float64 for
    integer ones).

    Args:
        mode: "triangular", "triangular2" or "exp_range".
        gamma: the base of "exp_range" (ignored by the other modes).

    Returns:
        A callable of `x` (see above).

    Example:
        >>> from clr_loop.scale_fns import ModeScale
        >>> ModeScale("triangular2")(3), ModeScale("exp_range", gamma=0.5)(2)
        (0.25, 0.25)
    """

    def __init__(self, mode, gamma=1.0):
        self.mode = mode
        self.gamma = float(gamma)

    def __call__(self, x):
        if isinstance(x, numbers.Real) and not isinstance(x, bool):
            if self.mode == "triangular":
                return 1.0
            if self.mode == "triangular2":
                return 1.0 / (2.0 ** (x - 1))
            return self.gamma**x
        if isinstance(x, np.ndarray) or isinstance(x, np.generic):
            x = np.asarray(x)
            x = x if x.dtype.kind == "f" else x.astype(np.float64)
            if self.mode == "triangular":
                return np.ones_like(x)
            if self.mode == "triangular2":
                return 1.0 / (2.0 ** (x - 1))
            return np.power(x.dtype.type(self.gamma), x)
        import tensorflow as tf  # a tensor or variable

        x = tf.convert_to_tensor(x)
        x = x if x.dtype.is_floating else tf.cast(x, tf.float64)
        if self.mode == "triangular":
            return tf.ones_like(x)
        if self.mode == "triangular2":
            return 1.0 / tf.pow(tf.cast(2.0, x.dtype), x - 1)
        return tf.pow(tf.cast(self.gamma, x.dtype), x)

    def __repr__(self):
        return f"ModeScale({self.mode!r}" + (f", gamma={self.gamma!r})" if self.mode == "exp_range" else ")")


# Usual ways of writing each named mode. `gamma` is a free variable (a closure, as in TFA's own
# ExponentialCyclicalLearningRate) in the first exp_range form and a global in the second.
def _references():
    triangular = [lambda x: 1.0, lambda x: 1]
    triangular2 = [
        lambda x: 1 / (2.0 ** (x - 1)),
        lambda x: 1 / 2.0 ** (x - 1),
        lambda x: 1.0 / (2 ** (x - 1)),
        lambda x: 1 / (2 ** (x - 1)),
        lambda x: 0.5 ** (x - 1),
        lambda x: 2.0 ** (1 - x),
        lambda x: 2.0 ** -(x - 1),
    ]
    gamma = 0.5

    def closure_form():
        return lambda x: gamma**x

    globals_form = eval("lambda x: gamma ** x", {"gamma": gamma})  # noqa: S307 (a constant string)
    refs = [("triangular", f, None) for f in triangular] + [("triangular2", f, None) for f in triangular2]
    refs += [("exp_range", closure_form(), "closure"), ("exp_range", globals_form, "global")]
    return [(mode, _code_key(f.__code__), where) for mode, f, where in refs]


def _code_key(code):
    """The parts of a code object that decide what it computes (not names, lines or file)."""
    nested = 0x10  # CO_NESTED: where it was defined, not what it does
    return (code.co_code, code.co_consts, code.co_argcount, code.co_kwonlyargcount, code.co_flags & ~nested)


_REFERENCES = _references()
_PROBE = (1.0, 2.0, 3.0, 7.0, 40.0)


def named_mode(fn):
    """Returns `(mode, gamma)` when `fn` is one of the named modes written as usual, else None.

    `fn` must be a plain Python function of one argument whose code is one of the usual forms of a
    mode (`_references`) and that gives the mode's values on a few probe points (1, 2, 3, 7, 40).
    A `ModeScale` is its own mode.

    Args:
        fn: any object (usually a schedule's `scale_fn`).

    Returns:
        `(mode, gamma)` (a name from MODES and a float; gamma 1.0 but for "exp_range"), or None.

    Example:
        >>> from clr_loop.scale_fns import named_mode
        >>> named_mode(lambda x: 1 / (2.0 ** (x - 1)))
        ('triangular2', 1.0)
        >>> named_mode(lambda x: 1 / (3.0 ** (x - 1))) is None  # a function of its own
        True
    """
    if isinstance(fn, ModeScale):
        return fn.mode, fn.gamma
    if not isinstance(fn, types.FunctionType) or fn.__defaults__ or fn.__kwdefaults__:
        return None
    key = _code_key(fn.__code__)
    for mode, ref_key, where in _REFERENCES:
        if key != ref_key:
            continue
        gamma = 1.0
        if where == "closure":
            cells = fn.__closure__ or ()
            if len(cells) != 1 or fn.__code__.co_names:
                continue
            gamma = cells[0].cell_contents
        elif where == "global":
            names = fn.__code__.co_names
            if fn.__closure__ or len(names) != 1 or names[0] not in fn.__globals__:
                continue
            gamma = fn.__globals__[names[0]]
        elif fn.__closure__ or fn.__code__.co_names:
            continue
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            continue
        gamma = float(gamma)
        reference = ModeScale(mode, gamma)
        try:
            agrees = all(math.isclose(float(fn(x)), reference(x), rel_tol=1e-12) for x in _PROBE)
        except Exception:  # noqa: BLE001 (any failure: not this mode)
            agrees = False
        if agrees:
            return mode, gamma
    return None


def _importable(fn):
    """True when `fn` can be found again by its module and qualified name in another process."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or qualname != getattr(fn, "__name__", None):
        return False
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001
        return False
    return obj is fn


class SavedFunction:
    """A Python `scale_fn` inside a schedule's config: the callable in memory, a JSON dict when saved.

    `get_config` (called by Keras's serializer) returns one of:
    - `{"kind": "reference", "object": ...}`: a Keras-serializable object, serialized by Keras itself;
    - `{"kind": "import", "module", "name"}`: a function importable by module and name (`math.exp`,
      a function at the top of your own module); these two load without `safe_mode=False`;
    - `{"kind": "code", "code", "defaults", "closure", "globals", "name"}`: any other Python function,
      as Keras's `Lambda` layer saves one (its marshalled bytecode, base64), plus the globals it reads
      (modules by name, values serialized by Keras). Loading it runs that code, so it needs
      `safe_mode=False`;
    - `{"kind": "unsaved", "repr"}`: another callable (a `functools.partial`, an object): saving
      warns, loading raises a ValueError that says how to rebuild the schedule.

    Subclasses set `keras_module` (keras or tf_keras) and register themselves with it:
    `clr_loop.schedules.ScaleFunction` and `clr_loop.tf_keras.ScaleFunction`.

    Args:
        fn: the callable to save.

    Example:
        >>> import math
        >>> from clr_loop.schedules import ScaleFunction  # the Keras 3 subclass
        >>> ScaleFunction(math.exp).get_config()
        {'kind': 'import', 'module': 'math', 'name': 'exp'}
        >>> ScaleFunction.from_config({'kind': 'import', 'module': 'math', 'name': 'exp'}) is math.exp
        True
    """

    keras_module = None
    unset_is_safe = True  # whether loading code is refused when no safe-mode scope is set

    @staticmethod
    def safe_mode_state():
        """Returns the loader's safe mode: True, False, or None when no scope sets it."""
        raise NotImplementedError

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)

    def get_config(self):
        k = self.keras_module
        fn = self.fn
        if hasattr(fn, "get_config"):
            return {"kind": "reference", "object": k.saving.serialize_keras_object(fn)}
        if _importable(fn):
            return {"kind": "import", "module": fn.__module__, "name": fn.__name__}
        if isinstance(fn, types.FunctionType):
            try:
                return self._code_config(fn)
            except Exception as e:  # noqa: BLE001 (a closure or default Keras cannot write)
                warnings.warn(
                    f"scale_fn {fn.__qualname__}: its closure or defaults cannot be saved ({e}); the saved "
                    "schedule records only its name and cannot be loaded without rebuilding it",
                    UserWarning,
                    stacklevel=2,
                )
                return {"kind": "unsaved", "repr": repr(fn)}
        warnings.warn(
            f"scale_fn {fn!r} is neither a Python function nor a Keras-serializable object: the saved "
            "schedule records only its repr and cannot be loaded without rebuilding it",
            UserWarning,
            stacklevel=2,
        )
        return {"kind": "unsaved", "repr": repr(fn)}

    def _code_config(self, fn):
        """Returns the "code" config of a Python function: bytecode, defaults, closure, globals read."""
        saved_globals = {}
        for name in fn.__code__.co_names:
            if name not in fn.__globals__:
                continue  # an attribute name, or a builtin
            value = fn.__globals__[name]
            if value is fn:  # a recursive function
                saved_globals[name] = {"self": True}
            elif isinstance(value, types.ModuleType):
                saved_globals[name] = {"module": value.__name__}
            else:
                try:
                    saved_globals[name] = {"value": self._save_value(value)}
                except Exception:  # noqa: BLE001
                    warnings.warn(
                        f"scale_fn {fn.__qualname__} reads the global {name!r} ({type(value).__name__}), which "
                        "cannot be saved; the loaded function will not find it",
                        UserWarning,
                        stacklevel=3,
                    )
        return {
            "kind": "code",
            "name": fn.__name__,
            "code": _dump_code(fn),
            "defaults": [self._save_value(v) for v in fn.__defaults__ or ()],
            "closure": [
                {"self": True} if c.cell_contents is fn else self._save_value(c.cell_contents)
                for c in fn.__closure__ or ()
            ],
            "globals": saved_globals,
        }

    def _save_value(self, value):
        """A closure cell, default or global: a function (or other non-Keras callable) as a SavedFunction, else by Keras."""
        if callable(value) and not hasattr(value, "get_config") and not isinstance(value, type):
            return {"class_name": "ScaleFunction", "config": type(self)(value).get_config()}
        return self.keras_module.saving.serialize_keras_object(value)

    @classmethod
    def _load_value(cls, saved):
        if isinstance(saved, dict) and saved.get("class_name") == "ScaleFunction":
            return cls.from_config(saved["config"])
        return cls.keras_module.saving.deserialize_keras_object(saved)

    @classmethod
    def from_config(cls, config):
        """Returns the saved callable itself (not a SavedFunction)."""
        k = cls.keras_module
        kind = config.get("kind")
        if kind == "reference":
            return k.saving.deserialize_keras_object(config["object"])
        if kind == "import":
            return getattr(importlib.import_module(config["module"]), config["name"])
        if kind == "code":
            code = _load_code(cls, config["code"])
            defaults = tuple(cls._load_value(v) for v in config.get("defaults") or ())
            saved_closure = config.get("closure") or ()
            closure = tuple(
                types.CellType() if _is_self(v) else types.CellType(cls._load_value(v)) for v in saved_closure
            )
            globs = {"__builtins__": builtins}
            loaded = types.FunctionType(
                code, globs, config.get("name") or code.co_name, defaults or None, closure or None
            )
            for cell, saved in zip(closure, saved_closure):
                if _is_self(saved):  # a recursive nested function refers to itself through its closure
                    cell.cell_contents = loaded
            for name, saved in (config.get("globals") or {}).items():
                if saved.get("self"):
                    globs[name] = loaded
                elif "module" in saved:
                    globs[name] = importlib.import_module(saved["module"])
                else:
                    globs[name] = cls._load_value(saved["value"])
            return loaded
        raise ValueError(
            f"scale_fn: the saved schedule's scale_fn was {config.get('repr', 'a callable')}, which cannot be "
            "saved (only Python functions, named modes and Keras-serializable objects can). Rebuild the "
            "schedule with that callable, or pass mode='triangular'/'triangular2'/'exp_range' or a plain "
            "function as scale_fn before saving"
        )


def _is_self(saved):
    return isinstance(saved, dict) and saved.get("self") is True and len(saved) == 1


def _dump_code(fn):
    """Returns `fn`'s bytecode as Keras's `func_dump` writes it: marshalled, then base64 text."""
    return codecs.encode(marshal.dumps(fn.__code__), "base64").decode("ascii")


def _load_code(saved_function_class, code):
    """Returns the code object of the marshalled, base64 `code` (Keras's `func_dump` text), after the safe-mode check.

    Keras 3 refuses to load code unless `safe_mode=False` (or unsafe deserialization is enabled);
    tf_keras, as its Lambda layer does, refuses only inside a safe-mode scope (its `.keras` loader
    sets one; its `.h5` loader does not). Raises a ValueError naming `scale_fn` when refused.
    """
    state = saved_function_class.safe_mode_state()
    if state is True or (state is None and saved_function_class.unset_is_safe):
        raise ValueError(
            "scale_fn: this schedule's scale_fn was saved as Python bytecode, and loading it runs that "
            "code, so Keras refuses it in safe mode (as it refuses a Lambda layer's function). If you "
            "trust the file, load it with safe_mode=False (keras.models.load_model(path, "
            "safe_mode=False)) or, for a .h5 file (whose optimizer Keras rebuilds outside safe_mode), call "
            "keras.config.enable_unsafe_deserialization() first; or save the schedule with "
            "mode='triangular', 'triangular2' or 'exp_range', which needs no code"
        )
    try:
        raw = codecs.decode(code.encode("ascii"), "base64")
        loaded = marshal.loads(raw)
        if not isinstance(loaded, types.CodeType):
            raise TypeError(f"not a code object: {type(loaded).__name__}")
        return loaded
    except Exception as e:  # noqa: BLE001 (bad data, another Python's bytecode)
        raise ValueError(
            f"scale_fn: the saved Python function could not be rebuilt ({type(e).__name__}: {e}); bytecode "
            "loads only in the Python version that wrote it. Rebuild the schedule with its scale_fn"
        ) from e


def load(value, saved_function_class):
    """Returns the callable a config's `scale_fn` entry describes.

    `value` is a callable (an in-memory `get_config`), a `SavedFunction` config (clr_loop's saves), a
    Keras-2-era dict (`"__lambda__"` bytecode or a function reference, as tf.keras wrote TFA's
    schedules to `.keras` files), or a bare name (TFA's `.h5` files kept only the function's name,
    found here among Keras's registered and custom objects).

    Args:
        value: the config's `scale_fn` entry (see above).
        saved_function_class: the `SavedFunction` subclass of the Keras that loads it.

    Returns:
        The callable.

    Raises:
        ValueError: bytecode refused in safe mode or not loadable in this Python, a name that
            names no registered or custom object, a callable saved only by its repr, or a value
            that is none of the above.

    Example:
        >>> from clr_loop import scale_fns
        >>> from clr_loop.schedules import ScaleFunction
        >>> saved = {"class_name": "ScaleFunction", "config": {"kind": "import", "module": "math", "name": "sqrt"}}
        >>> scale_fns.load(saved, ScaleFunction)(16.0)
        4.0
    """
    if isinstance(value, SavedFunction):
        return value.fn
    if callable(value):
        return value
    k = saved_function_class.keras_module
    if isinstance(value, dict):
        class_name = str(value.get("class_name", ""))
        if class_name.endswith("ScaleFunction") and isinstance(value.get("config"), dict):
            return saved_function_class.from_config(value["config"])
        if class_name == "__lambda__":  # Keras's own form: {"value": [code, defaults, closure]}
            inner = value.get("config") or {}
            code, defaults, closure = inner.get("value") or [
                inner.get("code"),
                inner.get("defaults"),
                inner.get("closure"),
            ]
            code = _load_code(saved_function_class, code)
            cells = tuple(types.CellType(v) for v in closure or ())
            return types.FunctionType(
                code, {"__builtins__": builtins}, code.co_name, tuple(defaults or ()) or None, cells or None
            )
        return k.saving.deserialize_keras_object(value)
    if isinstance(value, str):
        found = k.saving.get_registered_object(value)
        if callable(found):
            return found
        raise ValueError(
            f"scale_fn: the saved schedule names its scale_fn only as {value!r} (TensorFlow Addons' .h5 files "
            "kept a function's name, not its code). Pass it when loading, "
            f"custom_objects={{{value!r}: your_scale_fn}}, or rebuild the schedule"
        )
    raise ValueError(f"scale_fn must be callable, got {value!r}")
