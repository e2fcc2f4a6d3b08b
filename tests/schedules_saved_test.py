"""Keras's names and saved configs of clr_loop's schedules are a file format: they stay as they were.

`SAVED` is `keras.saving.serialize_keras_object` of each schedule in `BUILDERS` as clr_loop wrote it
before `clr_loop.schedules` became a package split by role (the code of commit d129db0, run with
Keras 3.15). Each must load into the same schedule (class, config, values), into a `.keras` model
file as Keras's loader reads it, and today's code must write exactly the same config, under the
same registered names (`clr_loop>...`, and TFA's `Addons>...` for the CLR family).
"""

import json
import zipfile

import keras
import numpy as np
import pytest

from clr_loop import optimizers, schedules
from clr_loop.optimizers import CyclicalMomentum
from clr_loop.schedules import (
    CyclicalLearningRate,
    ExponentialCyclicalLearningRate,
    OneCycle,
    Sequence,
    Triangular2CyclicalLearningRate,
    TriangularCyclicalLearningRate,
    Warmup,
    WarmupStableDecay,
)

BUILDERS = {
    "cyclical_triangular2": lambda: CyclicalLearningRate(1e-4, 1e-2, 3, mode="triangular2"),
    "cyclical_exp_range": lambda: CyclicalLearningRate(1e-3, 0.1, 4, mode="exp_range", gamma=0.99, step_size_down=6),
    "triangular": lambda: TriangularCyclicalLearningRate(1e-4, 1e-2, 3),
    "triangular2": lambda: Triangular2CyclicalLearningRate(1e-4, 1e-2, 3, step_size_down=5),
    "exponential": lambda: ExponentialCyclicalLearningRate(1e-4, 1e-2, 3, gamma=0.99),
    "one_cycle": lambda: OneCycle(0.1, 100, anneal_strategy="linear", three_phase=True),
    "warmup": lambda: Warmup(OneCycle(0.1, 100), 10, shape="cos"),
    "sequence": lambda: Sequence(
        [(0.01, 10), (Warmup(WarmupStableDecay(0.1, 50, 0, 10), 5), 20), (CyclicalLearningRate(0.01, 0.1, 4), None)]
    ),
    "warmup_stable_decay": lambda: WarmupStableDecay(0.1, 1000, 100, 200, decay="sqrt"),
    "cyclical_momentum": lambda: CyclicalMomentum(OneCycle(0.1, 10), 0.8, 0.9),
}

# Written by the code before the split (see the module docstring); do not regenerate.
SAVED = {
    'cyclical_triangular2': {
        'module': 'clr_loop.schedules',
        'class_name': 'CyclicalLearningRate',
        'config': {
            'initial_learning_rate': 0.0001,
            'maximal_learning_rate': 0.01,
            'step_size': 3,
            'step_size_down': None,
            'scale_mode': 'cycle',
            'mode': 'triangular2',
            'gamma': 1.0,
            'name': 'CyclicalLearningRate',
            'dtype': 'float32',
        },
        'registered_name': 'clr_loop>CyclicalLearningRate',
    },
    'cyclical_exp_range': {
        'module': 'clr_loop.schedules',
        'class_name': 'CyclicalLearningRate',
        'config': {
            'initial_learning_rate': 0.001,
            'maximal_learning_rate': 0.1,
            'step_size': 4,
            'step_size_down': 6,
            'scale_mode': 'iterations',
            'mode': 'exp_range',
            'gamma': 0.99,
            'name': 'CyclicalLearningRate',
            'dtype': 'float32',
        },
        'registered_name': 'clr_loop>CyclicalLearningRate',
    },
    'triangular': {
        'module': 'clr_loop.schedules',
        'class_name': 'TriangularCyclicalLearningRate',
        'config': {
            'initial_learning_rate': 0.0001,
            'maximal_learning_rate': 0.01,
            'step_size': 3,
            'step_size_down': None,
            'scale_mode': 'cycle',
            'name': 'TriangularCyclicalLearningRate',
            'dtype': 'float32',
        },
        'registered_name': 'clr_loop>TriangularCyclicalLearningRate',
    },
    'triangular2': {
        'module': 'clr_loop.schedules',
        'class_name': 'Triangular2CyclicalLearningRate',
        'config': {
            'initial_learning_rate': 0.0001,
            'maximal_learning_rate': 0.01,
            'step_size': 3,
            'step_size_down': 5,
            'scale_mode': 'cycle',
            'name': 'Triangular2CyclicalLearningRate',
            'dtype': 'float32',
        },
        'registered_name': 'clr_loop>Triangular2CyclicalLearningRate',
    },
    'exponential': {
        'module': 'clr_loop.schedules',
        'class_name': 'ExponentialCyclicalLearningRate',
        'config': {
            'initial_learning_rate': 0.0001,
            'maximal_learning_rate': 0.01,
            'step_size': 3,
            'step_size_down': None,
            'scale_mode': 'iterations',
            'gamma': 0.99,
            'name': 'ExponentialCyclicalLearningRate',
            'dtype': 'float32',
        },
        'registered_name': 'clr_loop>ExponentialCyclicalLearningRate',
    },
    'one_cycle': {
        'module': 'clr_loop.schedules',
        'class_name': 'OneCycle',
        'config': {
            'maximal_learning_rate': 0.1,
            'total_steps': 100,
            'pct_start': 0.3,
            'anneal_strategy': 'linear',
            'div_factor': 25.0,
            'final_div_factor': 10000.0,
            'three_phase': True,
            'name': 'OneCycle',
        },
        'registered_name': 'clr_loop>OneCycle',
    },
    'warmup': {
        'module': 'clr_loop.schedules',
        'class_name': 'Warmup',
        'config': {
            'schedule': {
                'module': 'clr_loop.schedules',
                'class_name': 'OneCycle',
                'config': {
                    'maximal_learning_rate': 0.1,
                    'total_steps': 100,
                    'pct_start': 0.3,
                    'anneal_strategy': 'cos',
                    'div_factor': 25.0,
                    'final_div_factor': 10000.0,
                    'three_phase': False,
                    'name': 'OneCycle',
                },
                'registered_name': 'clr_loop>OneCycle',
            },
            'warmup_steps': 10,
            'start_lr': 0.0,
            'shape': 'cos',
            'name': 'Warmup',
        },
        'registered_name': 'clr_loop>Warmup',
    },
    'sequence': {
        'module': 'clr_loop.schedules',
        'class_name': 'Sequence',
        'config': {
            'segments': [
                [0.01, 10],
                [
                    {
                        'module': 'clr_loop.schedules',
                        'class_name': 'Warmup',
                        'config': {
                            'schedule': {
                                'module': 'clr_loop.schedules',
                                'class_name': 'WarmupStableDecay',
                                'config': {
                                    'peak_lr': 0.1,
                                    'total_steps': 50,
                                    'warmup_steps': 0,
                                    'decay_steps': 10,
                                    'final_lr': 0.0,
                                    'decay': 'linear',
                                    'name': 'WarmupStableDecay',
                                },
                                'registered_name': 'clr_loop>WarmupStableDecay',
                            },
                            'warmup_steps': 5,
                            'start_lr': 0.0,
                            'shape': 'linear',
                            'name': 'Warmup',
                        },
                        'registered_name': 'clr_loop>Warmup',
                    },
                    20,
                ],
                [
                    {
                        'module': 'clr_loop.schedules',
                        'class_name': 'CyclicalLearningRate',
                        'config': {
                            'initial_learning_rate': 0.01,
                            'maximal_learning_rate': 0.1,
                            'step_size': 4,
                            'step_size_down': None,
                            'scale_mode': 'cycle',
                            'mode': 'triangular',
                            'gamma': 1.0,
                            'name': 'CyclicalLearningRate',
                            'dtype': 'float32',
                        },
                        'registered_name': 'clr_loop>CyclicalLearningRate',
                    },
                    None,
                ],
            ],
            'name': 'Sequence',
        },
        'registered_name': 'clr_loop>Sequence',
    },
    'warmup_stable_decay': {
        'module': 'clr_loop.schedules',
        'class_name': 'WarmupStableDecay',
        'config': {
            'peak_lr': 0.1,
            'total_steps': 1000,
            'warmup_steps': 100,
            'decay_steps': 200,
            'final_lr': 0.0,
            'decay': 'sqrt',
            'name': 'WarmupStableDecay',
        },
        'registered_name': 'clr_loop>WarmupStableDecay',
    },
    'cyclical_momentum': {
        'module': 'clr_loop.optimizers',
        'class_name': 'CyclicalMomentum',
        'config': {
            'schedule': {
                'module': 'clr_loop.schedules',
                'class_name': 'OneCycle',
                'config': {
                    'maximal_learning_rate': 0.1,
                    'total_steps': 10,
                    'pct_start': 0.3,
                    'anneal_strategy': 'cos',
                    'div_factor': 25.0,
                    'final_div_factor': 10000.0,
                    'three_phase': False,
                    'name': 'OneCycle',
                },
                'registered_name': 'clr_loop>OneCycle',
            },
            'base_momentum': 0.8,
            'max_momentum': 0.9,
        },
        'registered_name': 'clr_loop>CyclicalMomentum',
    },
}

# The registered name of every Keras-serializable class, as before the split.
REGISTERED = {
    schedules: [
        "CyclicalLearningRate",
        "ExponentialCyclicalLearningRate",
        "OneCycle",
        "ScaleFunction",
        "Sequence",
        "Triangular2CyclicalLearningRate",
        "TriangularCyclicalLearningRate",
        "Warmup",
        "WarmupStableDecay",
    ],
    optimizers: [
        "CyclicalMomentum",
        "CyclicalMomentumAdam",
        "CyclicalMomentumAdamW",
        "CyclicalMomentumSGD",
        "ScheduleFreeAdamW",
        "ScheduleFreeSGD",
    ],
}
TFA_CLASSES = [
    "CyclicalLearningRate",
    "ExponentialCyclicalLearningRate",
    "Triangular2CyclicalLearningRate",
    "TriangularCyclicalLearningRate",
]
STEPS = np.arange(0, 130, 3)


def json_round_trip(value):
    return json.loads(json.dumps(value))


def test_registered_names_are_unchanged():
    for module, names in REGISTERED.items():
        for name in names:
            cls = getattr(module, name)
            assert keras.saving.get_registered_name(cls) == f"clr_loop>{name}"
            assert keras.saving.get_registered_object(f"clr_loop>{name}") is cls
    for name in TFA_CLASSES:
        assert keras.saving.get_registered_object(f"Addons>{name}") is getattr(schedules, name)


def test_tf_keras_registered_names_are_unchanged():
    tf_keras = pytest.importorskip("tf_keras")
    from clr_loop import tf_keras as clr_tf_keras

    for name in TFA_CLASSES + ["ScaleFunction"]:
        cls = getattr(clr_tf_keras, name)
        assert tf_keras.saving.get_registered_name(cls) == f"clr_loop>{name}"
        assert tf_keras.saving.get_registered_object(f"clr_loop>{name}") is cls
    for name in TFA_CLASSES:
        assert tf_keras.saving.get_registered_object(f"Addons>{name}") is getattr(clr_tf_keras, name)


@pytest.mark.parametrize("key", sorted(BUILDERS))
def test_todays_code_writes_the_saved_config(key):
    assert json_round_trip(keras.saving.serialize_keras_object(BUILDERS[key]())) == SAVED[key]


@pytest.mark.parametrize("key", sorted(BUILDERS))
def test_saved_config_loads_into_the_same_schedule(key):
    expected = BUILDERS[key]()
    loaded = keras.saving.deserialize_keras_object(json_round_trip(SAVED[key]))
    assert type(loaded) is type(expected)
    assert json_round_trip(loaded.get_config()) == json_round_trip(expected.get_config())
    np.testing.assert_array_equal(np.asarray(loaded(STEPS)), np.asarray(expected(STEPS)))


def test_model_files_saved_before_the_split_load(tmp_path):
    """A `.keras` file whose optimizer holds each saved schedule loads (in safe mode) with its rate."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as src:
        items = [(item, src.read(item.filename)) for item in src.infolist()]
    for key in sorted(set(BUILDERS) - {"cyclical_momentum"}):
        path = tmp_path / f"{key}.keras"
        with zipfile.ZipFile(path, "w") as dst:
            for item, data in items:
                if item.filename == "config.json":
                    config = json.loads(data)
                    config["compile_config"]["optimizer"]["config"]["learning_rate"] = SAVED[key]
                    data = json.dumps(config).encode()
                dst.writestr(item, data)
        loaded = keras.models.load_model(path)
        schedule = loaded.optimizer._learning_rate
        assert type(schedule) is type(BUILDERS[key]()), key
        loaded.optimizer.iterations.assign(7)
        assert float(loaded.optimizer.learning_rate) == float(BUILDERS[key]()(7)), key
