"""CIFAR-10 as checked uint8 arrays, from whichever copy is at hand.

Machines without internet still need the real data, so besides Keras's own
download the loader reads the copies people actually have: an `.npz`, the
official `cifar-10-python.tar.gz`, its extracted `cifar-10-batches-py/` folder,
or a `train/<class>/`, `test/<class>/` folder of images. Every source goes
through `validate_dataset`, so a bad copy fails at load time with a
`DataError` naming the file and the problem, instead of as a shape error deep
inside training.

All loaders return `((x_train, y_train), (x_test, y_test))`: images uint8
`(N, H, W, 3)` channels-last (32x32 for CIFAR-10 itself; an `.npz` may also
hold float pixels in 0..255, which come back as float32), labels int64 `(N,)`.
Labels are int64 whatever the source stored (Keras: (N, 1) uint8, the
pickles: Python ints) so that every source yields identical arrays.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import posixpath
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kt_dropout.config import check_positive_int

try:
    from PIL import Image
except ImportError:  # Pillow is needed only for image folders
    Image = None

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
# CIFAR-10's classes in label order (batches.meta's label_names), which is also their sorted order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_BATCHES_DIR = "cifar-10-batches-py"
_TAR_NAME = "cifar-10-python.tar.gz"
# Keras 2 extracted the archive to `datasets/cifar-10-batches-py`, Keras 3 to
# `datasets/cifar-10-batches-py-target/cifar-10-batches-py`.
_CACHE_ENTRIES = (_BATCHES_DIR, _BATCHES_DIR + "-target", _TAR_NAME)
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_BATCH_NAMES = (*_TRAIN_BATCHES, _TEST_BATCH)
_BATCH_SIDE = 32
# No piece of a CIFAR-10 copy is larger than the whole data set, 60000 32x32 RGB images, as float64 pixels:
# sizes that files declare (array shapes, pickled bytes, archive members) are checked against this before
# anything is allocated or read, so a forged header is an error, not a MemoryError.
_MAX_BYTES = 60000 * _BATCH_SIDE * _BATCH_SIDE * 3 * 8
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_KNOWN_LAYOUTS = (
    f"an .npz with {', '.join(_NPZ_KEYS)}; {_TAR_NAME}; a {_BATCHES_DIR}/ folder or its parent; "
    "or an image folder with train/<class>/ and test/<class>/"
)

# What a CIFAR-10 batch pickle may refer to: numpy arrays and bytes, nothing
# else. A pickle can name any callable, so an unrestricted load of a file from
# the internet could run code.
_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    # numpy 1 pickles name numpy.core, numpy 2 pickles numpy._core
    *((f"{core}.multiarray", name) for core in ("numpy.core", "numpy._core") for name in ("_reconstruct", "scalar")),
    *((f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")),
})
# The pickle module documents these (and "not necessarily only these") for bad input.
_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError, TypeError, ValueError,
)
_ARCHIVE_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)  # gzip.BadGzipFile is an OSError
_NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)

Dataset = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """A data set that is missing a piece, unreadable, or not shaped like CIFAR-10."""


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
    return validate_dataset(_read_source(source, md5, class_names, num_classes), str(source), num_classes)


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
            f"{source}: train images are {_size(train[0].shape[1:3])} but test images are {_size(test[0].shape[1:3])}"
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
        for split, full, part in zip(_SPLITS, whole, subset) if len(part[1]) < len(full[1])
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
                raise FileNotFoundError(f"{requested}: CIFAR-10 data named by {origin} does not exist")
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
            f"Keras's cache {_keras_cache()}, and the download from {CIFAR10_URL} failed ({exc}). Point at a copy "
            f"({_KNOWN_LAYOUTS}) with kt-dropout's --data PATH, pytest's --kt-data PATH or ${DATA_ENV_VAR}=PATH"
        ) from exc
    if keras.config.image_data_format() == "channels_first":
        x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    return (x_train, y_train), (x_test, y_test)


def _read_source(path: Path, md5: str | None, class_names: Sequence[str] | None, num_classes: int) -> Dataset:
    """Raw arrays from whichever of the four layouts `path` is; validation comes after."""
    batches = _batch_folder(path) if path.is_dir() else None
    images = path.is_dir() and not batches and ((path / "train").is_dir() or (path / "test").is_dir())
    if class_names is not None and not images:
        raise DataError(f"{path}: class names are for image folders (train/<class>/, test/<class>/); this is not one")
    if batches:
        return _read_batch_folder(batches)
    if images:
        return _read_image_folder(path, _expected_classes(path, class_names, num_classes))
    if path.is_dir():
        raise DataError(f"{path}: folder of unknown layout; expected {_KNOWN_LAYOUTS}")
    name = path.name.lower()
    if name.endswith(".npz"):
        return _read_npz(path)
    if name.endswith((".tar.gz", ".tgz")):
        return _read_tar(path, md5)
    raise DataError(f"{path}: unknown file type; expected {_KNOWN_LAYOUTS}")


def _batch_folder(path: Path) -> Path | None:
    """`path`, or its `cifar-10-batches-py/`, if it holds batches; else None."""
    if (path / _BATCHES_DIR).is_dir():
        path = path / _BATCHES_DIR
    return path if path.name == _BATCHES_DIR or any((path / name).exists() for name in _BATCH_NAMES) else None


def _check_declared_array(where: str, shape, dtype) -> None:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: a forged shape cannot overflow
    _check_declared(where, nbytes, f"an array of shape {shape} and dtype {dtype}")


def _check_declared(where: str, nbytes: int, what: str) -> None:
    """Refuses what a file declares to be larger than any piece of CIFAR-10, before it is allocated or read."""
    if nbytes > _MAX_BYTES:
        raise DataError(
            f"{where}: {what} of {nbytes:,} bytes, more than the whole of CIFAR-10 can be ({_MAX_BYTES:,} bytes: "
            "60000 32x32 RGB images as float64); refused before reading it"
        )


# --- .npz ----------------------------------------------------------------------------------------


def _read_npz(path: Path) -> Dataset:
    if not zipfile.is_zipfile(path):  # also what a truncated .npz looks like: its directory is at the end
        raise DataError(f"{path}: not an .npz (zip) archive; truncated, or another format")
    try:
        _check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as npz:
            present = npz.files
            arrays = {key: npz[key] for key in _NPZ_KEYS if key in present}
    except DataError:
        raise
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: damaged .npz ({exc})") from exc
    missing = [key for key in _NPZ_KEYS if key not in arrays]
    if missing:
        raise DataError(f"{path}: {', '.join(missing)} missing (the file has: {', '.join(present) or 'nothing'})")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _check_npz_sizes(path: Path) -> None:
    """Each array's size as its .npy header declares it, before numpy allocates the array (np.load does so
    before reading a byte of it)."""
    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            key = member.filename.removesuffix(".npy")  # the name np.load gives it
            if key not in _NPZ_KEYS:
                continue
            with archive.open(member) as file:
                version = np.lib.format.read_magic(file)
                if version not in headers:
                    raise DataError(f"{path}: {key} is in .npy format {version}; expected (1, 0) or (2, 0)")
                shape, _, dtype = headers[version](file)
            _check_declared_array(f"{path}: {key}", shape, dtype)


# --- the official python batches, in a folder or in the tarball ----------------------------------


def _read_batch_folder(folder: Path) -> Dataset:
    batches = {}
    for name in _BATCH_NAMES:
        path = folder / name
        if path.is_file():
            _check_declared(str(path), path.stat().st_size, "the batch file")
            batches[name] = _read_batch(path.read_bytes(), str(path))
    return _assemble_batches(batches, str(folder))


def _read_tar(path: Path, md5: str | None) -> Dataset:
    """Reads the batches straight out of the archive, in one streaming pass, without extracting.

    Two members of one batch name (in two folders, or repeated) are refused: which one is meant is a guess.
    """
    if md5 is not None:
        _check_md5(path, md5)
    batches, members = {}, {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if name not in _BATCH_NAMES:
                    continue
                if name in members:
                    raise DataError(
                        f"{path}: two members named {name}, {members[name]} and {member.name}; "
                        "the archive must hold each batch once"
                    )
                members[name] = member.name
                if member.isfile():
                    _check_declared(f"{path}: {member.name}", member.size, "the archive member")
                    raw = tar.extractfile(member).read()  # archive errors stay apart from pickle errors
                    batches[name] = _read_batch(raw, f"{path}: {member.name}")
    except _ARCHIVE_ERRORS as exc:
        raise DataError(f"{path}: not a readable tar.gz archive, or truncated ({exc})") from exc
    return _assemble_batches(batches, str(path))


def _check_md5(path: Path, expected: str) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise DataError(
            f"{path}: MD5 checksum mismatch: expected {expected}, got {actual}; the file is corrupt or not "
            "the official CIFAR-10 archive (md5=None skips the check)"
        )


class _BatchUnpickler(pickle.Unpickler):
    """Loads only the globals of `_PICKLE_GLOBALS`, and checks an array's declared size before numpy allocates it."""

    def __init__(self, raw: bytes, where: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found

        def reconstruct(subtype, shape, dtype):  # numpy allocates the array of this shape at once
            _check_declared_array(self.where, shape, dtype)
            return found(subtype, shape, dtype)

        return reconstruct


def _check_pickled_lengths(raw: bytes, where: str) -> None:
    """Each length the pickle's opcodes declare (bytes, strings) must fit in the file.

    The unpickler allocates what an opcode declares before reading it: a few
    bytes declaring a terabyte are a MemoryError. Walking the opcodes reads
    each argument from the data there is, and stops at the first that is not.
    """
    try:
        for _ in pickletools.genops(io.BytesIO(raw)):
            pass
    except ValueError as exc:  # what genops raises for every malformed or truncated opcode
        raise DataError(f"{where}: not a readable CIFAR-10 batch pickle ({exc})") from exc


def _read_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: `b"data"` (N, 3072) uint8 rows in channel-major order, `b"labels"`."""
    _check_pickled_lengths(raw, where)
    try:
        batch = _BatchUnpickler(raw, where).load()
    except DataError:
        raise
    except _PICKLE_ERRORS as exc:
        raise DataError(f"{where}: not a readable CIFAR-10 batch pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        raise DataError(f"{where}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    rows, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if rows.ndim != 2 or rows.shape[1] != 3 * _BATCH_SIDE * _BATCH_SIDE:
        raise DataError(f"{where}: data has shape {rows.shape}; expected (N, 3072) rows of 3x32x32 pixels")
    if labels.shape != (len(rows),):
        raise DataError(f"{where}: labels have shape {labels.shape} for {len(rows)} images")
    return rows.reshape(-1, 3, _BATCH_SIDE, _BATCH_SIDE).transpose(0, 2, 3, 1), labels


def _assemble_batches(batches: dict, where: str) -> Dataset:
    missing = [name for name in _BATCH_NAMES if name not in batches]
    if missing:
        raise DataError(f"{where}: missing batch(es) {', '.join(missing)}")
    images, labels = zip(*(batches[name] for name in _TRAIN_BATCHES))
    return (np.concatenate(images), np.concatenate(labels)), batches[_TEST_BATCH]


# --- an image folder tree ------------------------------------------------------------------------


def _expected_classes(root: Path, class_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """The class folders an image folder must hold, in label order: `class_names`, else CIFAR-10's ten."""
    names = CIFAR10_CLASSES if class_names is None else tuple(class_names)
    if isinstance(class_names, str) or not all(isinstance(name, str) and name for name in names) \
            or len(set(names)) != len(names):
        raise DataError(f"{root}: class names must be distinct folder names, in label order; got {class_names!r}")
    if len(names) != num_classes:
        raise DataError(
            f"{root}: {len(names)} class names ({', '.join(names)}) for {num_classes} classes; give one class "
            "folder name per class, in label order (class_names, or --class-names on the command line)"
        )
    return names


def _read_image_folder(root: Path, classes: tuple[str, ...]) -> Dataset:
    """`train/<class>/*` and `test/<class>/*`; a class's label is its folder name's place in `classes`."""
    if Image is None:
        raise ImportError(f"{root}: reading an image folder needs Pillow (pip install pillow)")
    for split in _SPLITS:
        _check_class_folders(root, split, classes)
    return tuple(_read_image_split(root / split, classes) for split in _SPLITS)


def _check_class_folders(root: Path, split: str, classes: tuple[str, ...]) -> None:
    """Exactly the folders of `classes`: another name, or a missing class, would silently shift the labels."""
    if not (root / split).is_dir():
        raise DataError(f"{root}: no {split}/ folder; an image folder needs train/<class>/ and test/<class>/")
    found = sorted(entry.name for entry in (root / split).iterdir() if entry.is_dir())
    problems = [
        f"{problem} {', '.join(names)}"
        for problem, names in (
            ("unknown", [name for name in found if name not in classes]),
            ("missing", [name for name in classes if name not in found]),
        ) if names
    ]
    if problems:
        raise DataError(
            f"{root / split}: class folders must be {', '.join(classes)}, one per class in label order (other "
            f"names need class_names, or --class-names on the command line); {'; '.join(problems)}"
        )


def _read_image_split(folder: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    files = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((folder / name).iterdir())
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(_IMAGE_SUFFIXES)}) in any class folder")
    images = [_read_image(path) for path, _ in files]
    first = images[0]
    for (path, _), image in zip(files, images):
        if image.shape != first.shape:
            raise DataError(
                f"{path}: image is {_size(image.shape)} but {files[0][0]} is {_size(first.shape)}; "
                "all images must share one size"
            )
    return np.stack(images), np.array([index for _, index in files], dtype=np.int64)


def _read_image(path: Path) -> np.ndarray:
    """The image as uint8 RGB; its size is read from the header and checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # Pillow warns of "decompression bombs" on open; the check below refuses them
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # the header only
        with image:
            if image.width > _BATCH_SIDE or image.height > _BATCH_SIDE:
                raise DataError(
                    f"{path}: image is {_size((image.height, image.width))}, larger than CIFAR-10's "
                    f"{_BATCH_SIDE}x{_BATCH_SIDE}; refused before decoding it"
                )
            return np.asarray(image.convert("RGB"))
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from exc


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


def _size(shape: tuple) -> str:
    """Height x width, e.g. 32x32, of an image's (height, width, ...) shape."""
    return f"{shape[0]}x{shape[1]}"
