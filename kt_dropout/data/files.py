"""The copies of CIFAR-10 people have, read without trusting what they declare.

An `.npz`, the official `cifar-10-python.tar.gz`, its extracted
`cifar-10-batches-py/` folder, or a `train/<class>/`, `test/<class>/` folder
of images, each read as raw arrays for `kt_dropout.data.cifar10` to validate. A copy
from elsewhere may be forged or mislabelled, so nothing is guessed: sizes that
a file declares (array headers, pickled lengths, archive members, image
headers) are checked against the whole of CIFAR-10 before anything is
allocated, read or decoded; image-folder classes must be named; an archive
naming one batch twice is refused. Every problem is a `DataError` naming the
file.
"""

from __future__ import annotations

import hashlib
import io
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

from kt_dropout.errors import DataError, MissingPackage, reason

try:
    from PIL import Image
except ImportError:  # Pillow is needed only for image folders
    Image = None

# CIFAR-10's classes in label order (batches.meta's label_names), which is also their sorted order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCHES_DIR = "cifar-10-batches-py"
TAR_NAME = "cifar-10-python.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_BATCH_NAMES = (*_TRAIN_BATCHES, _TEST_BATCH)
_BATCH_SIDE = 32
# No piece of a CIFAR-10 copy is larger than the whole data set, 60000 32x32 RGB images, as float64 pixels:
# sizes that files declare (array shapes, pickled bytes, archive members) are checked against this before
# anything is allocated or read, so a forged header is an error, not a MemoryError.
_MAX_BYTES = 60000 * _BATCH_SIDE * _BATCH_SIDE * 3 * 8
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
KNOWN_LAYOUTS = (
    f"an .npz with {', '.join(_NPZ_KEYS)}; {TAR_NAME}; a {BATCHES_DIR}/ folder or its parent; "
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


def read_source(path: Path, md5: str | None, class_names: Sequence[str] | None, num_classes: int) -> Dataset:
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
        raise DataError(f"{path}: folder of unknown layout; expected {KNOWN_LAYOUTS}")
    name = path.name.lower()
    if name.endswith(".npz"):
        return _read_npz(path)
    if name.endswith((".tar.gz", ".tgz")):
        return _read_tar(path, md5)
    raise DataError(f"{path}: unknown file type; expected {KNOWN_LAYOUTS}")


def _batch_folder(path: Path) -> Path | None:
    """`path`, or its `cifar-10-batches-py/`, if it holds batches; else None."""
    if (path / BATCHES_DIR).is_dir():
        path = path / BATCHES_DIR
    return path if path.name == BATCHES_DIR or any((path / name).exists() for name in _BATCH_NAMES) else None


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
        raise DataError(f"{path}: damaged .npz ({reason(exc)})") from exc
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
        raise DataError(f"{path}: not a readable tar.gz archive, or truncated ({reason(exc)})") from exc
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
        raise MissingPackage(f"{root}: reading an image folder needs Pillow (pip install pillow)")
    for split in SPLITS:
        _check_class_folders(root, split, classes)
    return tuple(_read_image_split(root / split, classes) for split in SPLITS)


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
                f"{path}: image is {height_by_width(image.shape)} but {files[0][0]} is {height_by_width(first.shape)}; "
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
                    f"{path}: image is {height_by_width((image.height, image.width))}, larger than CIFAR-10's "
                    f"{_BATCH_SIDE}x{_BATCH_SIDE}; refused before decoding it"
                )
            return np.asarray(image.convert("RGB"))
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({reason(exc)})") from exc


def height_by_width(shape: tuple) -> str:
    """Height x width, e.g. 32x32, of an image's (height, width, ...) shape."""
    return f"{shape[0]}x{shape[1]}"
