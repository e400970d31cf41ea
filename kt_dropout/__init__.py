"""kt-dropout: the study "dropout with batch normalization in a VGG-like CNN on CIFAR-10" as software.

- `DropoutVGGHyperModel` and `search()`: the post's network as a Keras Tuner search space.
- `VGGConfig`, `build_model`, `Recipe`, `compile_model`, `train`: the network and the post's recipe.
- `RunRecord`: what `train` returns, and what the results store keeps, for one run.
- `ResultStore`: a results store's runs (`records()`, `to_dataframe()`), as `reproduce` and the suite keep them.
- `load_cifar10`: CIFAR-10 from a path, `$KT_DROPOUT_DATA`, Keras's cache or Keras's download.
- `kt_dropout.study.experiments`, `kt_dropout.study.runner`, `kt_dropout.study.report`: the post as a reproducibility suite.

The names that need Keras (and so a backend) are imported on first use (PEP 562), so that `kt-dropout --help`
and other light imports of the package do not start TensorFlow or JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kt_dropout.config import Recipe, VGGConfig

if TYPE_CHECKING:
    from kt_dropout.data.cifar10 import DataError, load_cifar10
    from kt_dropout.study.results import ResultStore
    from kt_dropout.model import build_model, compile_model
    from kt_dropout.training.record import RunRecord
    from kt_dropout.training.run import train
    from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
    from kt_dropout.tuning.search import SearchFailedError, SearchResult, search

__version__ = "0.1.0"

_LAZY = {
    "DataError": "kt_dropout.data.cifar10",
    "DropoutVGGHyperModel": "kt_dropout.tuning.hypermodel",
    "ResultStore": "kt_dropout.study.results",
    "RunRecord": "kt_dropout.training.record",
    "SearchFailedError": "kt_dropout.tuning.search",
    "SearchResult": "kt_dropout.tuning.search",
    "build_model": "kt_dropout.model",
    "compile_model": "kt_dropout.model",
    "load_cifar10": "kt_dropout.data.cifar10",
    "search": "kt_dropout.tuning.search",
    "train": "kt_dropout.training.run",
}

__all__ = [
    "DataError",
    "DropoutVGGHyperModel",
    "Recipe",
    "ResultStore",
    "RunRecord",
    "SearchFailedError",
    "SearchResult",
    "VGGConfig",
    "build_model",
    "compile_model",
    "load_cifar10",
    "search",
    "train",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kt_dropout' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
