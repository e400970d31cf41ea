"""The flag groups that several commands share (network, recipe, data, checkpoint, time budget), and what the
flags describe: the network, the recipe and the data."""

from __future__ import annotations

import argparse
import dataclasses

from kt_dropout.cli.parser import flag_type, positive_int
from kt_dropout.config import DEFAULT_CHECKPOINT_EVERY, Recipe, VGGConfig, parse_duration, parse_every
from kt_dropout.errors import UsageError
from kt_dropout.seeding import SCHEMES
from kt_dropout.study.experiments import CONFIGS
from kt_dropout.training import budget

PRECISION_HELP = (
    "float32 (as the post) or mixed_bfloat16 (bfloat16 arithmetic, float32 weights; faster on GPUs, stored as "
    "a recipe of its own) [float32]"
)
DETERMINISTIC_HELP = (
    "deterministic kernels (TensorFlow op determinism, XLA's deterministic ops, PyTorch's deterministic "
    "algorithms), so a replay on the same GPU gives the same history; slower on GPUs, recorded in the run (its "
    "key), and unneeded on CPUs, whose runs replay exactly anyway [off]"
)


def _every(text: str) -> str:
    """--checkpoint-every: N epochs or a duration, checked here (`config.parse_every`), kept as given."""
    flag_type(parse_every)(text)
    return text


def add_network_flags(parser: argparse.ArgumentParser) -> None:
    """The VGGConfig fields; each flag overrides the configuration named by --config (default: bn)."""
    group = parser.add_argument_group("network (VGGConfig); each flag overrides --config")
    group.add_argument("--config", choices=list(CONFIGS), metavar="NAME",
                       help="start from this named configuration of the post (see `kt-dropout experiments`); "
                            "default: bn, the post's baseline with batch norm and no dropout")
    group.add_argument("--nfilters", type=int, nargs=3, metavar="N", help="filters of the three conv blocks")
    group.add_argument("--ndense", type=int, metavar="N", help="units of each of the two dense layers")
    group.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                       help="BatchNormalization before every ReLU")
    group.add_argument("--dropout-conv", type=float, nargs=3, metavar="R",
                       help="dropout rate after every conv of each of the three blocks, in [0, 1)")
    group.add_argument("--dropout-dense", type=float, metavar="R", help="dropout rate after each dense layer")
    group.add_argument("--num-classes", type=int, metavar="N", help="size of the softmax output")
    group.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"), help="input image shape")


def add_recipe_flags(parser: argparse.ArgumentParser, epochs_help: str) -> None:
    """The Recipe fields; unset ones keep the post's recipe."""
    default = Recipe()
    group = parser.add_argument_group("training recipe (Recipe)")
    group.add_argument("--learning-rate", type=float, metavar="LR",
                       help=f"Adam's learning rate [{default.learning_rate:g}]")
    group.add_argument("--batch-size", type=positive_int, metavar="N", help=f"mini-batch size [{default.batch_size}]")
    group.add_argument("--epochs", type=positive_int, metavar="N", help=f"{epochs_help} [{default.epochs}]")
    group.add_argument("--pixel-scale", type=float, metavar="S", help="inputs are multiplied by this [1/256]")
    group.add_argument("--selection", choices=Recipe.SELECTIONS,
                       help="pick the best epoch on the test set (test, as the post) or on a holdout split of "
                            "the training set, reporting test accuracy there (holdout) [test]")
    group.add_argument("--holdout", type=positive_int, metavar="N",
                       help=f"size of the holdout split, with --selection holdout [{default.holdout}]")
    group.add_argument("--precision", choices=Recipe.PRECISIONS, help=PRECISION_HELP)
    group.add_argument("--deterministic", action="store_true", default=None, help=DETERMINISTIC_HELP)
    group.add_argument("--seeding", choices=SCHEMES,
                       help="each layer's initial weights and dropout masks from its own seed, derived from the run's "
                            "seed and the layer's name (per-layer), or Keras's one global stream, as runs stored "
                            f"before this flag (global) [{default.seeding}]")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="PATH",
                        help="CIFAR-10 as an .npz, the official tarball, a cifar-10-batches-py folder or an image "
                             "folder tree; default: $KT_DROPOUT_DATA, then Keras's cache, then Keras's download")
    source.add_argument("--synthetic", type=positive_int, nargs=2, metavar=("N_TRAIN", "N_TEST"),
                        help="train on a small synthetic CIFAR-10-shaped data set instead, to try things out")
    group.add_argument("--class-names", type=lambda text: text.split(","), metavar="NAME,...",
                       help="with --data of an image folder: its class folders' names in label order, for folders "
                            "not named as CIFAR-10's classes [airplane,automobile,...,truck]")
    add_size_flags(group)


def add_size_flags(group) -> None:
    """--train-size, --test-size: part of the data (`first_per_class`), a study of its own."""
    for split, whole in (("train", "50,000"), ("test", "10,000")):
        group.add_argument(f"--{split}-size", type=positive_int, metavar="N",
                           help=f"use only the first N {split} images, taken class by class in turn (balanced), "
                                f"e.g. to try a GPU setup quickly; runs on them are stored apart [all: CIFAR-10 has "
                                f"{whole}]")


def add_checkpoint_flag(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument("--checkpoint-every", type=_every, default=DEFAULT_CHECKPOINT_EVERY, metavar="N|DURATION",
                        help=f"save an epoch checkpoint every N epochs or every DURATION (e.g. 5, 10m): {where} "
                             f"[{DEFAULT_CHECKPOINT_EVERY}]")


def add_tensorboard_flag(parser: argparse.ArgumentParser, runs: str) -> None:
    parser.add_argument("--tensorboard", metavar="DIR",
                        help=f"write {runs} to DIR as TensorBoard runs: every epoch's metrics and the "
                             "hyperparameters (HParams), on every backend; `tensorboard --logdir DIR` shows them "
                             '(needs pip install "kt-dropout[tensorboard]")')


def check_tensorboard(args) -> None:
    """That --tensorboard's folder can be written and the `tensorboard` package is there, before a command starts
    its backend (`Command.check`); its `run` then takes `args.tensorboard` as it is."""
    if args.tensorboard is None:
        return
    from kt_dropout.storage.atomic import check_writable_folder
    from kt_dropout.storage.tensorboard import require

    require()
    check_writable_folder(args.tensorboard)


def add_budget_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-budget", type=flag_type(parse_duration), metavar="DURATION",
                        help="stop at the last epoch boundary within DURATION (e.g. 9m, 1.5h) from the command's start, "
                             f"checkpoint, print what is done and left, and exit {budget.EXIT_INCOMPLETE} (incomplete: "
                             "rerun the command to continue)")


def _given(args, cls) -> dict:
    """The fields of dataclass `cls` that flags set."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


def config_of(args) -> VGGConfig:
    """The network the flags describe: --config, then every network flag given."""
    return (CONFIGS[args.config] if args.config else VGGConfig()).replace(**_given(args, VGGConfig))


def recipe_of(args) -> Recipe:
    """The recipe the flags describe: the post's, with every recipe flag given."""
    return Recipe(**_given(args, Recipe))


def config_name(config: VGGConfig) -> str:
    """The name of the post's configuration that the flags describe, whichever flags did, else "custom"."""
    return next((name for name, named in CONFIGS.items() if named == config), "custom")


def config_changes(config: VGGConfig) -> str:
    """"dropout_conv=(0.2, 0.2, 0.2)": the fields of `config` that differ from the defaults."""
    default = VGGConfig()
    changes = [
        f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(VGGConfig)
        if getattr(config, f.name) != getattr(default, f.name)
    ]
    return ", ".join(changes) or "(the defaults)"


def check_class_names(args) -> None:
    """--class-names names an image folder's classes: refused with --synthetic."""
    if args.synthetic and args.class_names:
        raise UsageError("--class-names: names the class folders of an image folder given with --data, "
                         "not --synthetic's classes")


def data_of(args, config: VGGConfig):
    """`((x_train, y_train), (x_test, y_test))` from --synthetic, --data or the standard lookup, cut to
    --train-size/--test-size, and where it came from in words, for the banner."""
    from kt_dropout.data.cifar10 import (
        cifar10_source,
        describe_subset,
        first_per_class,
        load_cifar10,
        synthetic_cifar10,
    )

    if args.synthetic:
        n_train, n_test = args.synthetic
        whole = synthetic_cifar10(n_train, n_test, image_size=config.input_shape[0], num_classes=config.num_classes)
        source = "synthetic_cifar10 (--synthetic)"
    else:
        whole = load_cifar10(args.data, num_classes=config.num_classes, class_names=args.class_names)
        source = cifar10_source(args.data)
    data = first_per_class(whole, args.train_size, args.test_size)
    part = describe_subset(whole, data)
    return data, f"{source}, {part}" if part else source
