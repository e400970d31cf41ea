"""kt-dropout: the study "dropout with batch normalization in a VGG-like CNN on CIFAR-10" as software."""

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.model import build_model, compile_model

__version__ = "0.1.0"
