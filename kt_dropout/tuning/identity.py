"""What a search is: the settings whose change would make its trials incomparable.

Keras Tuner resumes a project whatever the tuner it is given now (its own
users report trials of two networks mixed, keras-team/keras-tuner#149, #803),
and its chief takes any worker. A search's identity -- network, recipe,
epochs, data, space, tuner, objective, backend -- is written into its project
folder when it starts; resuming it, or serving a worker, with another
identity is refused, naming each difference. Not in it: the seed, the number
of trials, `trials_per_step` and how each trial is spread over devices, which
change how many trials run or their random draws, not what a trial is.
"""

from __future__ import annotations

import dataclasses
import json

import keras
import keras_tuner

from kt_dropout.data.cifar10 import data_fingerprint

IDENTITY_FILE = "kt_dropout_search.json"  # in the project folder, beside Keras Tuner's oracle.json


def search_identity(hypermodel, epochs: int, tuner: str, objective: keras_tuner.Objective, data) -> dict:
    """The identity of a search of `hypermodel` with `tuner` (a class name) on `data` (None on a chief,
    which loads none: its workers' data becomes its own)."""
    space = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(space)
    recipe = dataclasses.asdict(hypermodel.recipe)
    del recipe["epochs"]  # `epochs` below is the one the trials train
    identity = {
        "network": hypermodel.base.to_dict(),
        "recipe": recipe,
        "epochs": epochs,
        "data": None if data is None else data_identity(data),
        "space": {hp.name: {"type": type(hp).__name__, **_without_name(hp.get_config())} for hp in space.space},
        "tuner": tuner,
        "objective": f"{objective.name} ({objective.direction})",
        "backend": keras.backend.backend(),
    }
    return json.loads(json.dumps(identity))  # as it reads back from its file: lists, not tuples


def data_identity(data) -> dict:
    """The shapes and types of `((x_train, y_train), (x_test, y_test))`, and a digest of their contents."""
    (x_train, y_train), (x_test, y_test) = data
    return {
        "train": f"{_shape(x_train)} images, {_shape(y_train)} labels",
        "test": f"{_shape(x_test)} images, {_shape(y_test)} labels",
        "fingerprint": data_fingerprint(data),
    }


def differences(old: dict, new: dict) -> list[str]:
    """Each field in which two identities differ, "epochs: 2 -> 3", in order; a field None in one of them
    (a chief's data) is not known there and not compared."""
    if old.get("data") is None or new.get("data") is None:
        old, new = {**old, "data": None}, {**new, "data": None}
    flat_old, flat_new = _flat(old), _flat(new)
    missing = "(absent)"
    return [
        f"{name}: {_text(flat_old.get(name, missing))} -> {_text(flat_new.get(name, missing))}"
        for name in dict.fromkeys([*flat_old, *flat_new])
        if flat_old.get(name, missing) != flat_new.get(name, missing)
    ]


def with_known_data(identity: dict, other: dict) -> dict:
    """`identity`, its unknown data (a chief's) taken from `other`."""
    return identity if identity["data"] is not None else {**identity, "data": other.get("data")}


def _shape(array) -> str:
    return f"{'x'.join(map(str, array.shape))} {array.dtype}"


def _without_name(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "name"}


def _flat(identity: dict) -> dict:
    """{"network.ndense": 16, "space.ndense": {...}, "epochs": 2, ...}: a difference names its field."""
    flat = {}
    for name, value in identity.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            flat[name] = value
    return flat


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)
