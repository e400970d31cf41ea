"""kt-dropout: the study "dropout with batch normalization in a VGG-like CNN on CIFAR-10" as software.

- `DropoutVGGHyperModel` and `search()`: the post's network as a Keras Tuner search space.
- `VGGConfig`, `build_model`, `Recipe`, `compile_model`, `train`: the network and the post's recipe.
- `RunRecord`: what `train` returns, and what the results store keeps, for one run.
- `load_cifar10`: CIFAR-10 from a path, `$KT_DROPOUT_DATA`, Keras's cache or Keras's download.
- `kt_dropout.study.experiments`, `kt_dropout.study.runner`, `kt_dropout.study.report`: the post as a reproducibility suite.
"""

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data import DataError, load_cifar10
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.model import build_model, compile_model
from kt_dropout.record import RunRecord
from kt_dropout.tuning.search import SearchFailedError, SearchResult, search
from kt_dropout.training import train

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "DropoutVGGHyperModel",
    "Recipe",
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
