"""CIFAR-10 as checked uint8 arrays, from whichever copy is at hand.

Machines without internet still need the real data, so besides Keras's own
download the loader reads the copies people actually have: an `.npz`, the
official `cifar-10-python.tar.gz`, its extracted `cifar-10-batches-py/` folder,
or a `train/<class>/`, `test/<class>/` folder of images (read by
`kt_dropout.data.files`, which trusts no size a file declares). Every source
goes through `validate_dataset`, so a bad copy fails at load time with a
`DataError` naming the file and the problem, instead of as a shape error deep
inside training.

All loaders return `((x_train, y_train), (x_test, y_test))`: images uint8
`(N, H, W, 3)` channels-last (32x32 for CIFAR-10 itself, at most 32x32 from
an image folder; an `.npz` may also hold float pixels in 0..255, which come
back as float32), labels int64 `(N,)`.
Labels are int64 whatever the source stored (Keras: (N, 1) uint8, the
pickles: Python ints) so that every source yields identical arrays.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kt_dropout.config import check_positive_int
from kt_dropout.errors import FileMissingError, reason
from kt_dropout.data.files import (
    BATCHES_DIR,
    CIFAR10_CLASSES,
    KNOWN_LAYOUTS,
    SPLITS,
    TAR_NAME,
    DataError,
    Dataset,
    height_by_width,
    read_source,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_TAR_MD5",
    "CIFAR10_URL",
    "DATA_ENV_VAR",
    "DataError",
    "data_fingerprint",
    "describe_subset",
    "first_per_class",
    "load_cifar10",
    "synthetic_cifar10",
    "validate_dataset",
    "validate_split",
]

# Where Keras downloads CIFAR-10 from (keras.datasets.cifar10), and the archive's published checksum.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
DATA_ENV_VAR = "KT_DROPOUT_DATA"

# Keras 2 extracted the archive to `datasets/cifar-10-batches-py`, Keras 3 to
# `datasets/cifar-10-batches-py-target/cifar-10-batches-py`.
_CACHE_ENTRIES = (BATCHES_DIR, BATCHES_DIR + "-target", TAR_NAME)


def cifar10_source(path=None) -> str:
    """Where `load_cifar10(path)` looks first, in words."""
    where = path or os.environ.get(DATA_ENV_VAR)
    return f"CIFAR-10 from {where}" if where else "CIFAR-10 from Keras's cache (or its download)"


def load_cifar10(
    path: str | os.PathLike | None = None, *, num_classes: int = 10, md5: str | None = CIFAR10_TAR_MD5,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Loads and validates CIFAR-10 from the first source that is there.

    Sources, in order: `path`; the `KT_DROPOUT_DATA` environment variable;
    Keras's cache (`$KERAS_HOME/datasets`, default `~/.keras/datasets`); Keras's
    own download. A `path` or variable that names nothing is an error, never a
    silent fall-through to another copy.

    Args:
        path: an `.npz`, the official tarball, a `cifar-10-batches-py/` folder
            (or its parent) or an image folder tree; see the module docstring.
        num_classes: labels must lie in `[0, num_classes)`.
        md5: checksum a tarball must have; the published one by default,
            `None` to skip the check (e.g. for a repacked archive).
        class_names: for an image folder, the class folders' names in label
            order (`num_classes` of them); CIFAR-10's ten (`CIFAR10_CLASSES`)
            by default. Any other folder, or a missing one, is an error.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: uint8 `(N, H, W, 3)` images
        (float32 from an `.npz` of float pixels) and int64 `(N,)` labels.

    Raises:
        FileNotFoundError: `path` or `KT_DROPOUT_DATA` does not exist.
        DataError: the data found is unreadable, incomplete or malformed; or
            there is none and the download failed (offline): the message names
            every place looked at and how to point at a copy.
    """
    source = _requested_source(path) or _keras_cache_entry()
    if source is None:
        return validate_dataset(_download_with_keras(), "keras.datasets.cifar10", num_classes)
    return validate_dataset(read_source(source, md5, class_names, num_classes), str(source), num_classes)


def validate_dataset(data, source: str, num_classes: int = 10) -> Dataset:
    """Checks `((x_train, y_train), (x_test, y_test))`; returns it with 1-D int64 labels.

    Labels are class indices, (N,) or (N, 1), or one-hot rows (N, num_classes).

    Images are uint8, or float with every pixel a finite value in 0..255, not
    all within 0..1 (the network scales pixels by 1/256, as it does uint8
    ones: images scaled already would be scaled twice); float images come
    back as float32, and so do uint8 ones beside float ones. Every loader
    and every user-supplied data set goes through here, so each problem is
    reported once, the same way, naming `source`.
    """
    try:
        (x_train, y_train), (x_test, y_test) = data
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{source}: expected ((x_train, y_train), (x_test, y_test)), got {type(data).__name__}"
        ) from exc
    train = validate_split(x_train, y_train, "train", source, num_classes)
    test = validate_split(x_test, y_test, "test", source, num_classes)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(
            f"{source}: train images are {height_by_width(train[0].shape[1:3])} but test images are {height_by_width(test[0].shape[1:3])}"
        )
    if train[0].dtype != test[0].dtype:  # uint8 and float: float32 both, so that a network takes either split
        train, test = ((x.astype(np.float32), y) for x, y in (train, test))
    return train, test


def data_fingerprint(data) -> str:
    """16 hex characters identifying a data set's contents, stored with results to tell data sets apart.

    Labels are hashed as 1-D int64, so a data set fingerprints the same whether
    its labels came as Keras's (N, 1) uint8 or as `load_cifar10`'s (N,) int64.
    """
    (x_train, y_train), (x_test, y_test) = data
    digest = hashlib.sha256()
    for array in (x_train, _canonical_labels(y_train), x_test, _canonical_labels(y_test)):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array)
    return digest.hexdigest()[:16]


def first_per_class(data, train_size: int | None = None, test_size: int | None = None) -> Dataset:
    """The first `train_size` training and `test_size` test images, taken class by class in turn.

    Each class gives its first images in turn (5,000 of CIFAR-10's training
    images are the first 500 of each class), so a subset is balanced even
    where the source stores its images class by class, as an image folder
    does. The images keep the source's order; None keeps a split whole. A
    subset's `data_fingerprint` differs from the whole's, so runs on it are
    stored apart.
    """
    (x_train, y_train), (x_test, y_test) = data
    return (_first_per_class(x_train, y_train, train_size, "train"),
            _first_per_class(x_test, y_test, test_size, "test"))


def describe_subset(whole, subset) -> str:
    """What `first_per_class` took, e.g. "first 5000 of 50000 train images, balanced over classes"; "" if all."""
    taken = [
        f"first {len(part[1])} of {len(full[1])} {split} images"
        for split, full, part in zip(SPLITS, whole, subset) if len(part[1]) < len(full[1])
    ]
    return f"{', '.join(taken)}, balanced over classes" if taken else ""


def _first_per_class(x, y, size: int | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    if size is None:
        return x, y
    check_positive_int(f"{split}_size", size)
    if size > len(y):
        raise DataError(f"{split}_size: {size} is more than the {len(y)} {split} images of the data")
    labels = _canonical_labels(y)
    rank = np.empty(len(labels), dtype=np.int64)  # an image's place among the images of its class
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    chosen = np.sort(np.lexsort((labels, rank))[:size])  # by rank, then class; back in the source's order
    return x[chosen], y[chosen]


def synthetic_cifar10(
    n_train: int = 256, n_test: int = 64, *, image_size: int = 32, num_classes: int = 10, seed: int = 0
) -> Dataset:
    """A tiny deterministic data set a CNN learns in a few epochs, for tests and the smoke profile.

    Each class is a colour of its own under stripes of its own orientation,
    plus per-image noise: separable, but not by a single pixel. Classes are
    balanced; same arguments, same arrays.
    """
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 1, 1, 3))
    angles = np.pi * np.arange(num_classes) / num_classes
    coords = np.arange(image_size) / image_size
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    phase = np.cos(angles)[:, None, None] * cols + np.sin(angles)[:, None, None] * rows
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * phase)
    prototypes = (colours * (0.6 + 0.4 * stripes[..., None])).astype(np.float32)

    def split(n):
        labels = rng.permutation(np.arange(n) % num_classes)
        noise = rng.standard_normal((n, image_size, image_size, 3), dtype=np.float32) * 16
        return np.clip(np.rint(prototypes[labels] + noise), 0, 255).astype(np.uint8), labels

    return validate_dataset((split(n_train), split(n_test)), "synthetic_cifar10", num_classes)


# --- where the data is ---------------------------------------------------------------------------


def _requested_source(path) -> Path | None:
    """The `path` argument, else the environment variable; either must exist if given."""
    for value, origin in ((path, "the path argument"), (os.environ.get(DATA_ENV_VAR), f"${DATA_ENV_VAR}")):
        if value:
            requested = Path(value).expanduser()
            if not requested.exists():
                raise FileMissingError(f"{requested}: CIFAR-10 data named by {origin} does not exist")
            return requested
    return None


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


def _keras_cache_entry() -> Path | None:
    return next((_keras_cache() / name for name in _CACHE_ENTRIES if (_keras_cache() / name).exists()), None)


def _download_with_keras() -> Dataset:
    """Keras's download; it follows `image_data_format`, so channels-first results are transposed back."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # Keras reports a failed download as a bare Exception ("URL fetch failure ...")
        raise DataError(
            f"CIFAR-10 not found: no path given, ${DATA_ENV_VAR} not set, none of {', '.join(_CACHE_ENTRIES)} in "
            f"Keras's cache {_keras_cache()}, and the download from {CIFAR10_URL} failed ({reason(exc)}). Point at a "
            f"copy ({KNOWN_LAYOUTS}) with kt-dropout's --data PATH, pytest's --kt-data PATH or ${DATA_ENV_VAR}=PATH"
        ) from exc
    if keras.config.image_data_format() == "channels_first":
        x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    return (x_train, y_train), (x_test, y_test)


# --- validation ----------------------------------------------------------------------------------


def validate_split(x, y, split: str, source: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Checks one split's `x_<split>`, `y_<split>` as `validate_dataset` does; returns them with 1-D int64 labels."""
    x_name, y_name = f"x_{split}", f"y_{split}"
    x, y = _as_array(x, x_name, source), _as_array(y, y_name, source)
    if x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape[1:]:
        raise DataError(f"{source}: {x_name} has shape {x.shape}; expected (N, height, width, 3) RGB images")
    if len(x) == 0:
        raise DataError(f"{source}: {x_name} is empty")
    x = _check_pixels(x, x_name, source)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] == num_classes:
        y = _from_one_hot(y, y_name, source)
    if y.ndim != 1:
        raise DataError(
            f"{source}: {y_name} has shape {y.shape}; expected (N,) or (N, 1) class indices or (N, {num_classes}) "
            "one-hot rows"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: {y_name} has dtype {y.dtype}; expected integer class indices")
    if len(y) != len(x):
        raise DataError(f"{source}: {x_name} has {len(x)} images but {y_name} has {len(y)} labels")
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        raise DataError(
            f"{source}: {y_name} has {np.count_nonzero(outside)} labels outside [0, {num_classes}) "
            f"(e.g. {y[outside][0]})"
        )
    return x, y.astype(np.int64)


def _from_one_hot(y: np.ndarray, name: str, source: str) -> np.ndarray:
    """One-hot rows as class indices. Any other rows (soft labels) are refused: every trainer takes classes."""
    ones = y == 1
    one_hot = (ones | (y == 0)).all(axis=1) & (ones.sum(axis=1) == 1)
    if not one_hot.all():
        row = int(np.argmin(one_hot))
        raise DataError(
            f"{source}: {name} has one column per class but row {row} is not one-hot ({y[row].tolist()}); "
            "expected class indices or rows of a single 1 among 0s"
        )
    return ones.argmax(axis=1)


def _check_pixels(x: np.ndarray, name: str, source: str) -> np.ndarray:
    """uint8 images as they are; float images as float32 (what the network computes in), if every pixel is
    a finite value in 0..255 and not all are within 0..1. The recipe multiplies pixels by its `pixel_scale`
    (1/256), so a NaN would poison training and images in 0..1 or outside 0..255 were scaled another way."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise DataError(f"{source}: {name} has dtype {x.dtype}; expected uint8 or float pixels in 0..255")
    low, high = x.min(), x.max()  # NaN comes out of both; no array-sized temporaries unless a pixel is bad
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(x)
        raise DataError(
            f"{source}: {name} has {np.count_nonzero(bad)} NaN or infinite pixel(s), the first at {_first(name, bad)}"
        )
    if low < 0 or high > 255:
        bad = (x < 0) | (x > 255)
        raise DataError(
            f"{source}: {name} has {np.count_nonzero(bad)} pixel(s) outside 0..255, the first {x[bad][0]} at "
            f"{_first(name, bad)}; pixels must be in 0..255, as in uint8 images: the network scales them by 1/256"
        )
    if high <= 1:
        raise DataError(
            f"{source}: {name} has dtype {x.dtype}; expected uint8 or float pixels in 0..255, but every pixel is "
            "within 0..1: the images look scaled already, and the network would scale them by 1/256 again"
        )
    return x.astype(np.float32, copy=False)


def _first(name: str, bad: np.ndarray) -> str:
    """Where the first True of `bad` is, e.g. x_train[3, 0, 5, 1]."""
    return f"{name}[{', '.join(str(int(i)) for i in np.unravel_index(np.argmax(bad), bad.shape))}]"


def _as_array(value, field: str, source: str) -> np.ndarray:
    if value is None:
        raise DataError(f"{source}: {field} is missing")
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:  # e.g. a ragged list
        raise DataError(f"{source}: {field} is not an array ({exc})") from exc


def _canonical_labels(y) -> np.ndarray:
    return np.asarray(y).reshape(-1).astype(np.int64)

