"""kt_dropout.data.cifar10: each layout round-trips, the lookup order holds, every bad file is a DataError naming it.

All files are small ones generated in tmp_path from `synthetic_cifar10`; no
test reads the real Keras cache or touches the network (the offline tests make
the download fail at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, ImageFile

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_TAR_MD5,
    CIFAR10_URL,
    DataError,
    data_fingerprint,
    describe_subset,
    first_per_class,
    load_cifar10,
    synthetic_cifar10,
    validate_dataset,
)
from kt_dropout.data.splits import prepare_splits
from kt_dropout.model import build_model
from kt_dropout.packing.model import load_member
from kt_dropout.packing.trainer import Member, PackTrainer
from kt_dropout.study.runner import open_study
from kt_dropout.study.settings import StudySettings

BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
DATA = synthetic_cifar10(n_train=50, n_test=10, seed=1)
# Image folders use a non-CIFAR size: the format accepts any one shared size.
SMALL = synthetic_cifar10(n_train=30, n_test=10, image_size=8, seed=2)
# Folders named otherwise than CIFAR-10's classes: label i in class_{9 - i}, whose sorted position is 9 - i.
OTHER_NAMES = [f"class_{9 - i}" for i in range(10)]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty Keras cache, no KT_DROPOUT_DATA, and a download that fails the test if reached."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("KT_DROPOUT_DATA", raising=False)

    def no_download():
        pytest.fail("the test reached keras.datasets.cifar10.load_data (a network download)")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_download)


# --- writers of each layout ----------------------------------------------------------------------


def write_npz(path, data=DATA, **overrides):
    """`data` as an .npz; an override replaces one array, None leaves it out."""
    (x_train, y_train), (x_test, y_test) = data
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **overrides}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def write_batch(path, x, y):
    """One batch as the official files have it: a protocol-2 pickle of channel-major rows."""
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    batch = {b"batch_label": path.name.encode(), b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [f"{i}.png".encode() for i in range(len(x))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_batches(parent, data=DATA, skip=()):
    """`parent/cifar-10-batches-py/` with five training batches, test_batch and batches.meta."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (x_train, y_train), test = data
    pieces = [*zip(np.array_split(x_train, 5), np.array_split(y_train, 5)), test]
    for name, (x, y) in zip(BATCH_NAMES, pieces):
        if name not in skip:
            write_batch(folder / name, x, y)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return folder


def write_tar(path, data=DATA, skip=()):
    """A gzipped tarball laid out like cifar-10-python.tar.gz."""
    folder = write_batches(path.parent / (path.name + ".src"), data, skip)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


def write_image_folder(root, data=SMALL, splits=("train", "test"), names=CIFAR10_CLASSES):
    """`root/<split>/<class>/<index>.png`, label i in folder names[i]."""
    for split, (x, y) in zip(("train", "test"), data):
        if split not in splits:
            continue
        for name in names:
            (root / split / name).mkdir(parents=True)
        for index, (image, label) in enumerate(zip(x, y)):
            Image.fromarray(image).save(root / split / names[label] / f"{index:04d}.png")
    return root


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def truncate(path, fraction=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return path


def naming(path, problem):
    """A `match=` pattern: the message starts with the file, then states the problem."""
    return "^" + re.escape(f"{path}: ") + ".*" + re.escape(problem)


def assert_same(loaded, expected):
    for (x, y), (x_expected, y_expected) in zip(loaded, expected):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3
        assert y.dtype == np.int64 and y.shape == (len(x),)
        np.testing.assert_array_equal(x, x_expected)
        np.testing.assert_array_equal(y, np.asarray(y_expected).reshape(-1))


# --- each layout loads ---------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    loaded = load_cifar10(write_npz(tmp_path / "c.npz"))
    assert_same(loaded, DATA)
    assert loaded[0][0].shape == (50, 32, 32, 3)


def test_npz_with_keras_style_uint8_column_labels(tmp_path):
    (x_train, y_train), (x_test, y_test) = DATA
    path = write_npz(tmp_path / "c.npz", y_train=y_train.astype(np.uint8)[:, None], y_test=y_test.astype(np.uint8))
    assert_same(load_cifar10(path), DATA)


@pytest.mark.parametrize("inside", [True, False], ids=["batches-folder", "its-parent"])
def test_batches_folder_round_trip(tmp_path, inside):
    folder = write_batches(tmp_path)
    assert_same(load_cifar10(folder if inside else tmp_path), DATA)


def test_tar_round_trip_with_its_md5(tmp_path):
    path = write_tar(tmp_path / "cifar-10-python.tar.gz")
    assert_same(load_cifar10(path, md5=md5_of(path)), DATA)


def test_tar_is_checked_against_the_published_md5(tmp_path):
    path = write_tar(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=naming(path, "MD5")) as error:
        load_cifar10(path)
    assert CIFAR10_TAR_MD5 in str(error.value) and md5_of(path) in str(error.value)


def test_tar_md5_none_skips_the_check(tmp_path):
    assert_same(load_cifar10(write_tar(tmp_path / "c.tgz"), md5=None), DATA)


@pytest.mark.parametrize("names", [CIFAR10_CLASSES, OTHER_NAMES], ids=["cifar-names", "class-names-given"])
def test_image_folder_round_trip_in_class_and_file_order(tmp_path, names):
    """Labels follow the class names' order (CIFAR-10's, or `class_names`), not the folders' sorted order."""
    root = write_image_folder(tmp_path / "images", names=names)
    loaded = load_cifar10(root, class_names=None if names is CIFAR10_CLASSES else names)
    expected = []
    for x, y in SMALL:
        order = np.argsort(y, kind="stable")  # by class, then by file name
        expected.append((x[order], y[order]))
    assert_same(loaded, expected)
    assert loaded[0][0].shape == (30, 8, 8, 3)


def test_image_folder_reads_jpeg_and_ignores_other_files(tmp_path):
    root = write_image_folder(tmp_path / "images")
    Image.fromarray(SMALL[0][0][0]).save(root / "train" / CIFAR10_CLASSES[0] / "extra.JPG")
    (root / "train" / CIFAR10_CLASSES[0] / "notes.txt").write_text("not an image")
    (x_train, y_train), _ = load_cifar10(root)
    assert x_train.shape == (31, 8, 8, 3) and y_train.shape == (31,)


def test_same_data_through_two_layouts_has_one_fingerprint(tmp_path):
    """The same data through two layouts is the same data set."""
    from_batches = load_cifar10(write_batches(tmp_path / "b"))
    from_npz = load_cifar10(write_npz(tmp_path / "c.npz"))
    assert data_fingerprint(from_batches) == data_fingerprint(from_npz)


# --- where the data is looked for ----------------------------------------------------------------


def test_path_beats_the_environment_variable(tmp_path, monkeypatch):
    other = synthetic_cifar10(n_train=20, n_test=10, seed=9)
    monkeypatch.setenv("KT_DROPOUT_DATA", str(write_npz(tmp_path / "env.npz", other)))
    assert_same(load_cifar10(write_npz(tmp_path / "arg.npz")), DATA)


def test_environment_variable_beats_the_keras_cache(tmp_path, monkeypatch):
    write_batches(tmp_path / "keras_home" / "datasets", synthetic_cifar10(n_train=20, n_test=10, seed=9))
    monkeypatch.setenv("KT_DROPOUT_DATA", str(write_npz(tmp_path / "env.npz")))
    assert_same(load_cifar10(), DATA)


@pytest.mark.parametrize("entry", ["cifar-10-batches-py", "cifar-10-batches-py-target", "cifar-10-python.tar.gz"])
def test_keras_cache_is_used_before_downloading(tmp_path, entry):
    datasets = tmp_path / "keras_home" / "datasets"
    if entry.endswith(".tar.gz"):
        datasets.mkdir(parents=True)
        path = write_tar(datasets / entry)
        loaded = load_cifar10(md5=md5_of(path))
    else:
        write_batches(datasets if entry == "cifar-10-batches-py" else datasets / entry)
        loaded = load_cifar10()
    assert_same(loaded, DATA)


def test_keras_download_comes_last_and_is_normalized(monkeypatch):
    (x_train, y_train), (x_test, y_test) = DATA
    keras_style = (x_train, y_train.astype(np.uint8)[:, None]), (x_test, y_test.astype(np.uint8)[:, None])
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: keras_style)
    assert_same(load_cifar10(), DATA)


def test_missing_path_is_named_with_its_origin(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match=naming(missing, "path argument")):
        load_cifar10(missing)


def test_missing_environment_path_is_named_with_its_origin(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("KT_DROPOUT_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match=naming(missing, "$KT_DROPOUT_DATA")):
        load_cifar10()


# --- bad data: always a DataError naming the file and the problem --------------------------------

(X_TRAIN, Y_TRAIN), (X_TEST, Y_TEST) = DATA
Y_OUT_OF_RANGE = Y_TRAIN.copy()
Y_OUT_OF_RANGE[[3, 5, 7]] = 12


def with_pixels(x, dtype, **pixels):
    """`x` as `dtype` with some pixels changed: `with_pixels(x, float, at_1_2_3_0=nan)`."""
    x = x.astype(dtype)
    for where, value in pixels.items():
        x[tuple(int(i) for i in where.split("_")[1:])] = value
    return x


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"x_train": X_TRAIN[..., 0]}, "x_train has shape (50, 32, 32); expected (N, height, width, 3)"),
        ({"x_test": X_TEST.astype(np.int64)}, "x_test has dtype int64; expected uint8 or float pixels in 0..255"),
        ({"x_test": with_pixels(X_TEST, np.float32, at_4_0_0_2=np.nan, at_1_2_3_0=np.nan)},
         "x_test has 2 NaN or infinite pixel(s), the first at x_test[1, 2, 3, 0]"),
        ({"x_train": with_pixels(X_TRAIN, np.float64, at_0_0_0_1=-np.inf)},
         "x_train has 1 NaN or infinite pixel(s), the first at x_train[0, 0, 0, 1]"),
        ({"x_train": with_pixels(X_TRAIN, np.float32, at_2_1_1_1=255.5, at_7_0_0_0=-1)},
         "x_train has 2 pixel(s) outside 0..255, the first 255.5 at x_train[2, 1, 1, 1]; pixels must be in "
         "0..255, as in uint8 images: the network scales them by 1/256"),
        ({"x_train": X_TRAIN / 255.0}, "x_train has dtype float64; expected uint8 or float pixels in 0..255, but "
                                       "every pixel is within 0..1: the images look scaled already"),
        ({"y_train": Y_OUT_OF_RANGE}, "y_train has 3 labels outside [0, 10) (e.g. 12)"),
        ({"y_train": Y_TRAIN[:-1]}, "x_train has 50 images but y_train has 49 labels"),
        ({"y_test": Y_TEST.astype(np.float64)}, "y_test has dtype float64; expected integer"),
        ({"y_test": np.stack([Y_TEST, Y_TEST], axis=1)}, "y_test has shape (10, 2)"),
        ({"x_test": X_TEST[:0], "y_test": Y_TEST[:0]}, "x_test is empty"),
        ({"x_test": X_TEST[:, :16, :16]}, "train images are 32x32 but test images are 16x16"),
        ({"x_test": None}, "x_test missing"),
        ({"x_test": None, "y_test": None}, "x_test, y_test missing"),
        ({"y_train": np.array(["a"] * 50)}, "y_train has dtype <U1"),
    ],
    ids=["shape", "integer-images", "nan-pixels", "infinite-pixel", "pixels-beyond-255", "scaled-pixels",
         "out-of-range", "length", "float-labels", "label-shape", "empty-split", "size-mismatch", "missing-x_test",
         "missing-test-split", "string-labels"],
)
def test_bad_npz_contents(tmp_path, overrides, problem):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=naming(path, problem)):
        load_cifar10(path)


def test_labels_beyond_num_classes(tmp_path):
    path = write_npz(tmp_path / "c.npz")
    with pytest.raises(DataError, match=naming(path, "labels outside [0, 5)")):
        load_cifar10(path, num_classes=5)


def test_npz_with_object_arrays_is_refused(tmp_path):
    path = write_npz(tmp_path / "c.npz", y_train=np.array([1, "a"] * 25, dtype=object))
    with pytest.raises(DataError, match=naming(path, "damaged .npz")):
        load_cifar10(path)


@pytest.mark.parametrize("fraction", [0.5, 0.999, 0.0], ids=["half", "last-byte", "empty-file"])
def test_truncated_npz(tmp_path, fraction):
    path = truncate(write_npz(tmp_path / "c.npz"), fraction)
    with pytest.raises(DataError, match=naming(path, "not an .npz")):
        load_cifar10(path)


def test_npy_named_npz(tmp_path):
    path = tmp_path / "c.npz"
    with open(path, "wb") as file:
        np.save(file, X_TRAIN)
    with pytest.raises(DataError, match=naming(path, "not an .npz")):
        load_cifar10(path)


@pytest.mark.parametrize("missing", ["test_batch", "data_batch_3"])
def test_batches_folder_missing_a_batch(tmp_path, missing):
    folder = write_batches(tmp_path, skip=[missing])
    with pytest.raises(DataError, match=naming(folder, f"missing batch(es) {missing}")):
        load_cifar10(tmp_path)


def test_tar_missing_the_test_batch(tmp_path):
    path = write_tar(tmp_path / "c.tar.gz", skip=["test_batch"])
    with pytest.raises(DataError, match=naming(path, "missing batch(es) test_batch")):
        load_cifar10(path, md5=None)


@pytest.mark.parametrize("fraction", [0.5, 0.98, 0.0], ids=["half", "tail", "empty-file"])
def test_truncated_tar(tmp_path, fraction):
    path = truncate(write_tar(tmp_path / "c.tar.gz"), fraction)
    with pytest.raises(DataError, match=naming(path, "not a readable tar.gz archive, or truncated")):
        load_cifar10(path, md5=None)


def test_tar_that_is_not_gzip(tmp_path):
    path = tmp_path / "c.tar.gz"
    path.write_bytes(b"this is not a gzip stream" * 100)
    with pytest.raises(DataError, match=naming(path, "not a readable tar.gz")):
        load_cifar10(path, md5=None)


@pytest.mark.parametrize(
    "corrupt",
    [lambda raw: b"garbage, not a pickle" * 10, lambda raw: raw[: len(raw) // 2], lambda raw: b""],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupt_batch_pickle(tmp_path, corrupt):
    folder = write_batches(tmp_path)
    batch = folder / "data_batch_2"
    batch.write_bytes(corrupt(batch.read_bytes()))
    with pytest.raises(DataError, match=naming(batch, "not a readable CIFAR-10 batch pickle")):
        load_cifar10(folder)


@pytest.mark.parametrize(
    "content, problem",
    [
        ([1, 2, 3], "not a CIFAR-10 batch"),
        ({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, "data has shape (4, 100)"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "labels have shape (3,) for 4 images"),
    ],
    ids=["not-a-dict", "row-length", "label-count"],
)
def test_batch_of_the_wrong_structure(tmp_path, content, problem):
    folder = write_batches(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=naming(folder / "test_batch", problem)):
        load_cifar10(folder)


class _RunsCode:
    """Unpickling this would delete the file at `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.remove, (str(self.path),)


def test_batch_pickle_cannot_run_code(tmp_path):
    folder = write_batches(tmp_path / "d")
    victim = tmp_path / "victim"
    victim.write_text("still here")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _RunsCode(victim), b"labels": []}))
    with pytest.raises(DataError, match=naming(folder / "test_batch", "refusing to load")):
        load_cifar10(folder)
    assert victim.exists()


def test_image_folder_without_test_split(tmp_path):
    root = write_image_folder(tmp_path / "images", splits=("train",))
    with pytest.raises(DataError, match=naming(root, "no test/ folder")):
        load_cifar10(root)


def test_image_folder_with_an_empty_split(tmp_path):
    root = write_image_folder(tmp_path / "images", splits=("train",))
    for name in CIFAR10_CLASSES:
        (root / "test" / name).mkdir(parents=True)
    with pytest.raises(DataError, match=naming(root / "test", "no images")):
        load_cifar10(root)


NINE_CLASSES = ", ".join(CIFAR10_CLASSES[1:])


@pytest.mark.parametrize("split, change, problem", [
    ("train", lambda folder: (folder / "airplane").rename(folder / "plane"), "unknown plane; missing airplane"),
    ("test", lambda folder: (folder / "extra_class").mkdir(), "unknown extra_class"),
    ("train", lambda folder: [(folder / name).rename(folder.parent / name) for name in CIFAR10_CLASSES[3:]],
     f"missing {', '.join(CIFAR10_CLASSES[3:])}"),
], ids=["plane-for-airplane", "an-eleventh", "three-classes"])
def test_image_folder_classes_must_be_cifar10s(tmp_path, split, change, problem):
    """A folder not named as a CIFAR-10 class, or a missing class, is refused: nothing becomes another class."""
    root = write_image_folder(tmp_path / "images")
    change(root / split)
    with pytest.raises(DataError, match=naming(root / split, "class folders must be airplane, automobile, bird")) \
            as error:
        load_cifar10(root)
    assert str(error.value).endswith(problem) and "class_names" in str(error.value)


@pytest.mark.parametrize("class_names, num_classes, problem", [
    (OTHER_NAMES[:3], 10, "3 class names (class_9, class_8, class_7) for 10 classes"),
    (None, 5, "10 class names (airplane, automobile"),
    (["a", "b", "a"], 3, "class names must be distinct folder names"),
    ("airplane", 8, "class names must be distinct folder names"),
], ids=["too-few-names", "cifar-names-for-5-classes", "repeated-name", "a-string"])
def test_class_names_name_each_class_once(tmp_path, class_names, num_classes, problem):
    root = write_image_folder(tmp_path / "images", names=OTHER_NAMES)
    with pytest.raises(DataError, match=naming(root, problem)):
        load_cifar10(root, class_names=class_names, num_classes=num_classes)


def test_image_folder_with_other_names_than_class_names(tmp_path):
    root = write_image_folder(tmp_path / "images", names=OTHER_NAMES)
    with pytest.raises(DataError, match=naming(root / "train", "unknown class_0") ):
        load_cifar10(root, class_names=[*OTHER_NAMES[:9], "class_x"])


def test_class_names_are_for_image_folders_only(tmp_path):
    path = write_npz(tmp_path / "c.npz")
    with pytest.raises(DataError, match=naming(path, "class names are for image folders")):
        load_cifar10(path, class_names=CIFAR10_CLASSES)


@pytest.mark.parametrize(
    "damage",
    [lambda path: truncate(path, 0.5), lambda path: path.write_bytes(b"not a png at all")],
    ids=["truncated", "garbage"],
)
def test_corrupt_image(tmp_path, damage):
    root = write_image_folder(tmp_path / "images")
    image = sorted((root / "test" / CIFAR10_CLASSES[0]).iterdir())[0]
    damage(image)
    with pytest.raises(DataError, match=naming(image, "unreadable image")):
        load_cifar10(root)


def test_images_of_different_sizes(tmp_path):
    root = write_image_folder(tmp_path / "images")
    odd = sorted((root / "train" / CIFAR10_CLASSES[3]).iterdir())[0]
    Image.new("RGB", (5, 7)).save(odd)
    with pytest.raises(DataError, match=naming(odd, "image is 7x5 but")):
        load_cifar10(root)


@pytest.mark.parametrize("name", ["cifar.txt", "cifar.zip", "cifar"])
def test_unknown_file_type(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(DataError, match=naming(path, "unknown file type")):
        load_cifar10(path)


def test_folder_of_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match=naming(tmp_path / "stuff", "folder of unknown layout")):
        load_cifar10(tmp_path / "stuff")


def test_keras_cache_with_bad_data_is_an_error_not_a_download(tmp_path):
    folder = write_batches(tmp_path / "keras_home" / "datasets", skip=["test_batch"])
    with pytest.raises(DataError, match=naming(folder, "missing batch(es) test_batch")):
        load_cifar10()


# --- sizes that files declare: checked before anything is allocated, read or decoded ------------

CIFAR10_AS_FLOAT64 = 60000 * 32 * 32 * 3 * 8  # bytes: the most any piece of a CIFAR-10 copy may declare
TERABYTE = 10**12
WHOLE_OF_CIFAR10 = "more than the whole of CIFAR-10 can be"


@contextlib.contextmanager
def allocating_under(limit=50 * 2**20):
    """Fails if the block allocates `limit` bytes or more at once (numpy's arrays and Python's objects)."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak:,} bytes allocated"


def forged_npz(path, shape, dtype):
    """A real .npz but for x_train, whose header declares `shape` and `dtype` before a few bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    write_npz(path, x_train=None)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("x_train.npy", header.getvalue() + bytes(64))
    return path


@pytest.mark.parametrize("shape, dtype", [((TERABYTE,), np.uint8), ((60001, 32, 32, 3), np.float64)],
                         ids=["a-terabyte", "just-more-than-cifar10"])
def test_npz_declaring_a_huge_array(tmp_path, shape, dtype):
    path = forged_npz(tmp_path / "c.npz", shape, dtype)
    nbytes = np.prod(shape, dtype=object) * np.dtype(dtype).itemsize
    with allocating_under(), pytest.raises(DataError, match=naming(
            path, f"x_train: an array of shape {shape} and dtype {np.dtype(dtype)} of {nbytes:,} bytes, "
                  f"{WHOLE_OF_CIFAR10}")):
        load_cifar10(path)


class _Allocates:
    """Unpickles as numpy's `_reconstruct` of an array of `shape`, which numpy allocates at once."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        reconstruct = np.zeros(1).__reduce__()[0]  # how numpy pickles every array
        return reconstruct, (np.ndarray, self.shape, b"b")


@pytest.mark.parametrize("raw, problem", [
    (b"\x80\x04\x8e" + struct.pack("<Q", TERABYTE) + b"a few bytes", f"expected {TERABYTE} bytes in a bytes8"),
    (b"\x80\x02T" + struct.pack("<i", 2**31 - 1) + b"abc.", f"expected {2**31 - 1} bytes in a string4"),
    (pickle.dumps({b"data": _Allocates((TERABYTE,)), b"labels": []}, protocol=2),
     f"an array of shape ({TERABYTE},) and dtype int8 of {TERABYTE:,} bytes, {WHOLE_OF_CIFAR10}"),
    (pickle.dumps({b"data": _Allocates((CIFAR10_AS_FLOAT64 + 1,)), b"labels": []}, protocol=2),
     f"and dtype int8 of {CIFAR10_AS_FLOAT64 + 1:,} bytes, {WHOLE_OF_CIFAR10}"),
], ids=["bytes-of-a-terabyte", "a-2gb-string", "an-array-of-a-terabyte", "an-array-just-more-than-cifar10"])
def test_batch_pickle_declaring_a_huge_payload(tmp_path, raw, problem):
    folder = write_batches(tmp_path)
    (folder / "data_batch_1").write_bytes(raw)
    with allocating_under(), pytest.raises(DataError, match=naming(folder / "data_batch_1", problem)):
        load_cifar10(folder)


def test_batch_file_larger_than_cifar10(tmp_path):
    folder = write_batches(tmp_path)
    with open(folder / "test_batch", "r+b") as file:
        file.truncate(CIFAR10_AS_FLOAT64 + 1)  # sparse: nothing written
    with allocating_under(), pytest.raises(DataError, match=naming(
            folder / "test_batch", f"the batch file of {CIFAR10_AS_FLOAT64 + 1:,} bytes, {WHOLE_OF_CIFAR10}")):
        load_cifar10(folder)


def test_tar_member_declaring_more_than_cifar10(tmp_path):
    """A member's header says how long it is: a gzip of a few KB may unpack to gigabytes."""
    member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    member.size = CIFAR10_AS_FLOAT64 + 1
    path = tmp_path / "c.tar.gz"
    path.write_bytes(gzip.compress(member.tobuf() + bytes(4096)))
    with allocating_under(), pytest.raises(DataError, match=naming(
            path, f"cifar-10-batches-py/data_batch_1: the archive member of {CIFAR10_AS_FLOAT64 + 1:,} bytes")):
        load_cifar10(path, md5=None)


@pytest.mark.parametrize("second", ["elsewhere/data_batch_1", "cifar-10-batches-py/data_batch_1"],
                         ids=["in-another-folder", "repeated"])
def test_tar_with_two_members_of_one_batch(tmp_path, second):
    """Which of two `data_batch_1` is meant is a guess: refused, with or without the checksum."""
    folder = write_batches(tmp_path / "src")
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        tar.add(folder / "test_batch", arcname=second)
    with pytest.raises(DataError, match=naming(
            path, f"two members named data_batch_1, cifar-10-batches-py/data_batch_1 and {second}")):
        load_cifar10(path, md5=None)


def write_png(path, width, height):
    """A valid PNG of `width`x`height` black pixels (1-bit grayscale): a few KB, however large it decodes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, pixels = bytes(1 + (width + 7) // 8), zlib.compressobj(9)  # a filter byte, then 8 pixels a byte
    idat = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(12000, 12000), (33, 8)])
def test_an_image_larger_than_cifar10s_is_refused_from_its_header(tmp_path, monkeypatch, recwarn, width, height):
    """Not decoded (12000x12000: 144 MB of pixels, 432 MB as RGB), and no warning from Pillow either."""
    with Image.open(write_png(tmp_path / "check.png", 40, 3)) as check:  # the writer's PNGs decode
        assert np.asarray(check.convert("RGB")).shape == (3, 40, 3)
    root = write_image_folder(tmp_path / "images")
    large = write_png(root / "train" / "cat" / "large.png", width, height)
    decoded = []
    decode = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or decode(image))
    with allocating_under(), pytest.raises(DataError, match=naming(
            large, f"image is {height}x{width}, larger than CIFAR-10's 32x32; refused before decoding it")):
        load_cifar10(root)
    assert decoded and (width, height) not in decoded
    assert not [warning for warning in recwarn if issubclass(warning.category, Image.DecompressionBombWarning)]


# --- validate_dataset on user arrays -------------------------------------------------------------


def test_validate_squeezes_column_labels_to_int64():
    (x_train, y_train), (x_test, y_test) = DATA
    checked = validate_dataset(((x_train, y_train[:, None].astype(np.uint8)), (x_test, list(y_test))), "mine")
    assert_same(checked, DATA)


@pytest.mark.parametrize(
    "data, problem",
    [
        ((X_TRAIN, Y_TRAIN), "expected ((x_train, y_train), (x_test, y_test))"),
        (((X_TRAIN, Y_TRAIN), None), "expected ((x_train, y_train), (x_test, y_test))"),
        (((X_TRAIN, Y_TRAIN), (None, Y_TEST)), "x_test is missing"),
        (((X_TRAIN, Y_TRAIN), ([[1, 2], [3]], Y_TEST)), "x_test is not an array"),
    ],
    ids=["one-split", "none-split", "none-images", "ragged"],
)
def test_validate_rejects_malformed_structures(data, problem):
    with pytest.raises(DataError, match="^mine: .*" + re.escape(problem)):
        validate_dataset(data, "mine")


# --- float images: accepted in 0..255, and every trainer sees them as it sees uint8 ones ----------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_images_in_0_to_255_come_back_as_float32_and_prepare_as_uint8_ones(dtype):
    floats = tuple((x.astype(dtype), y) for x, y in DATA)
    checked = validate_dataset(floats, "mine")
    for (x, _), (x_uint8, _) in zip(checked, DATA):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, x_uint8)
    assert (checked[0][0] is floats[0][0]) == (dtype == np.float32)  # float32 images are not copied
    for recipe in (Recipe(), Recipe(selection="holdout", holdout=10)):
        got, want = prepare_splits(checked, recipe, VGGConfig()), prepare_splits(DATA, recipe, VGGConfig())
        for field in dataclasses.fields(got):
            np.testing.assert_array_equal(getattr(got, field.name), getattr(want, field.name), err_msg=field.name)


def test_uint8_and_float_splits_both_come_back_as_float32():
    """One input dtype for every split: a packed model's input layer would truncate float pixels cast to uint8."""
    (x_train, y_train), (x_test, y_test) = DATA
    for data in [((x_train, y_train), (x_test / 1.0, y_test)), ((x_train / 1.0, y_train), (x_test, y_test))]:
        checked = validate_dataset(data, "mine")
        for (x, _), (x_uint8, _) in zip(checked, DATA):
            assert x.dtype == np.float32
            np.testing.assert_array_equal(x, x_uint8)


def test_npz_of_float_pixels(tmp_path):
    path = write_npz(tmp_path / "float.npz", x_train=X_TRAIN.astype(np.float32), x_test=X_TEST / 2.0)
    (x_train, _), (x_test, _) = load_cifar10(path)
    assert x_train.dtype == x_test.dtype == np.float32
    np.testing.assert_array_equal(x_train, X_TRAIN)
    np.testing.assert_array_equal(x_test, X_TEST / 2.0)


def test_packed_training_gets_float_pixels_with_their_fractions():
    """Keras casts inputs to the input layer's dtype: a uint8 one would make 100.5 into 100 without a word."""
    fractional = tuple((np.minimum(x, 254).astype(np.float32) + 0.5, y) for x, y in DATA)
    config = VGGConfig(nfilters=(2, 2, 2), ndense=4)
    trainer = PackTrainer([Member("a", config, 0)], validate_dataset(fractional, "mine"), Recipe())
    packed = trainer.model.predict(trainer.x_val, verbose=0)[:, 0]
    alone = load_member(build_model(config), trainer.member_weights(0))
    (_, _), (x_test, _) = fractional
    np.testing.assert_allclose(packed, alone.predict(x_test, verbose=0), rtol=1e-5, atol=1e-6)


# --- fingerprints and the synthetic set ----------------------------------------------------------


def test_fingerprint_is_stable_and_ignores_label_layout():
    fingerprint = data_fingerprint(DATA)
    assert re.fullmatch("[0-9a-f]{16}", fingerprint)
    (x_train, y_train), (x_test, y_test) = DATA
    copy = (x_train.copy(), y_train.astype(np.uint8)[:, None]), (x_test.copy(), y_test.copy())
    assert data_fingerprint(copy) == fingerprint
    assert data_fingerprint(synthetic_cifar10(n_train=50, n_test=10, seed=1)) == fingerprint


@pytest.mark.parametrize("split, field", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_fingerprint_changes_with_one_value(split, field):
    changed = [[array.copy() for array in pair] for pair in DATA]
    array = changed[split][field]
    array.flat[7] = (int(array.flat[7]) + 1) % (256 if field == 0 else 10)
    assert data_fingerprint(changed) != data_fingerprint(DATA)


def test_synthetic_set_is_deterministic_and_balanced():
    first, again = synthetic_cifar10(seed=3), synthetic_cifar10(seed=3)
    assert_same(first, again)
    assert data_fingerprint(synthetic_cifar10(seed=4)) != data_fingerprint(first)
    (x_train, y_train), (x_test, y_test) = first
    assert x_train.shape == (256, 32, 32, 3) and x_test.shape == (64, 32, 32, 3)
    assert np.bincount(y_train, minlength=10).min() >= 25


def test_synthetic_set_is_learnable():
    """Nearest class mean, the simplest learner, separates the classes: a CNN will too."""
    (x_train, y_train), (x_test, y_test) = synthetic_cifar10(n_train=200, n_test=100, num_classes=7, image_size=16)
    flat_train, flat_test = x_train.reshape(len(x_train), -1) / 255.0, x_test.reshape(len(x_test), -1) / 255.0
    means = np.stack([flat_train[y_train == c].mean(axis=0) for c in range(7)])
    predicted = np.argmin(((flat_test[:, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
    assert (predicted == y_test).mean() > 0.9


# --- part of the data ----------------------------------------------------------------------------


def class_sorted(n_per_class=5, num_classes=10):
    """Images stored class by class, as an image folder gives them; pixel value = the image's index."""
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = np.broadcast_to(np.arange(len(y), dtype=np.uint8)[:, None, None, None], (len(y), 2, 2, 3)).copy()
    return (x, y), (x[:20].copy(), y[:20].copy())


def test_first_per_class_takes_each_class_in_turn_in_the_source_order():
    whole = class_sorted()
    part = (x, y), (x_test, y_test) = first_per_class(whole, train_size=23, test_size=4)
    # 2 images of each class, the 3 left over from the first classes; the images keep their order and labels
    assert x[:, 0, 0, 0].tolist() == [i for i in range(50) if i % 5 < (3 if i < 15 else 2)]
    np.testing.assert_array_equal(y, whole[0][1][x[:, 0, 0, 0]])
    assert x_test[:, 0, 0, 0].tolist() == [0, 5, 10, 15] and y_test.tolist() == [0, 1, 2, 3]
    assert describe_subset(whole, part) == "first 23 of 50 train images, first 4 of 20 test images, balanced over classes"


def test_first_per_class_of_everything_is_the_data_itself():
    whole = class_sorted()
    for entire in (first_per_class(whole), first_per_class(whole, train_size=50, test_size=20)):
        for (x, y), (x_whole, y_whole) in zip(entire, whole):
            np.testing.assert_array_equal(x, x_whole)
            np.testing.assert_array_equal(y, y_whole)
        assert data_fingerprint(entire) == data_fingerprint(whole) and describe_subset(whole, entire) == ""


def test_a_subset_is_a_data_set_of_its_own():
    """Runs are keyed by the data's fingerprint: a subset's differs from the whole's and from other sizes', so runs
    on it never mix with runs on all of it; a study says which part it trained on."""
    fingerprints = {data_fingerprint(first_per_class(DATA, n)) for n in (None, 20, 30)}
    fingerprints.add(data_fingerprint(first_per_class(DATA, test_size=5)))
    assert len(fingerprints) == 4


def test_a_study_on_part_of_the_data_is_stored_apart(tmp_path):
    whole = open_study(StudySettings("smoke", tmp_path / "store"))
    part = open_study(StudySettings("smoke", tmp_path / "store", train_size=96, test_size=50))
    assert (len(part.data[0][1]), len(part.data[1][1])) == (96, 50)
    assert part.fingerprint != whole.fingerprint
    assert part.data_source == (
        "synthetic_cifar10 (first 96 of 128 train images, first 50 of 64 test images, "
        "balanced over classes)")


@pytest.mark.parametrize("sizes, problem", [
    ({"train_size": 0}, "train_size: must be a positive integer, got 0"),
    ({"test_size": -3}, "test_size: must be a positive integer, got -3"),
    ({"train_size": 2.5}, "train_size: must be a positive integer, got 2.5"),
    ({"train_size": 51}, "train_size: 51 is more than the 50 train images of the data"),
    ({"test_size": 11}, "test_size: 11 is more than the 10 test images of the data"),
])
def test_first_per_class_refuses_sizes_it_cannot_take(sizes, problem):
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}$"):
        first_per_class(DATA, **sizes)


# --- no data at all, offline: one message naming every place looked at -----------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_download_names_every_place_looked_at_and_how_to_point_at_a_copy(tmp_path, monkeypatch):
    def offline():  # what keras.datasets.cifar10.load_data raises without a network
        raise Exception(f"URL fetch failure on {CIFAR10_URL}: None -- [Errno -2] Name or service not known")  # noqa: TRY002

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError) as error:
        load_cifar10()
    message = str(error.value)
    for fragment in ["CIFAR-10 not found", "$KT_DROPOUT_DATA not set", str(tmp_path / "keras_home" / "datasets"),
                     f"download from {CIFAR10_URL} failed", "Name or service not known", "--data PATH",
                     "--kt-data PATH", "$KT_DROPOUT_DATA=PATH", "cifar-10-python.tar.gz"]:
        assert fragment in message
    assert "\n" not in message and "[Errno" not in message


def offline_env(tmp_path) -> dict:
    """A subprocess's environment in which CIFAR-10 is nowhere: no KT_DROPOUT_DATA, an empty Keras cache, and
    Keras's download refused at once (by a proxy on a port nothing listens on), with or without a network."""
    unreachable = "http://127.0.0.1:9"
    kept = {name: value for name, value in os.environ.items()
            if name.lower() not in ("kt_dropout_data", "no_proxy") and not name.startswith("PYTEST_XDIST_")}
    return {**kept, "KERAS_HOME": str(tmp_path / "empty_keras_home"), "https_proxy": unreachable,
            "HTTPS_PROXY": unreachable, "KERAS_BACKEND": "jax"}


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow")
def test_the_cli_says_where_it_looked_in_one_line_after_a_quiet_start(tmp_path):
    """On TensorFlow, without TF_CPP_MIN_LOG_LEVEL: no start-up lines, no traceback, only the error."""
    env = {**offline_env(tmp_path), "KERAS_BACKEND": "tensorflow"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run([sys.executable, "-m", "kt_dropout.cli", "train", "--train-size", "100"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("kt-dropout train: error: CIFAR-10 not found: ")
    assert CIFAR10_URL in line and str(tmp_path / "empty_keras_home" / "datasets") in line and "--data PATH" in line


def plane_for_airplane(tmp_path):
    root = write_image_folder(tmp_path / "images")
    (root / "train" / "airplane").rename(root / "train" / "plane")
    return root


@pytest.mark.parametrize("source, flags, problem", [
    (plane_for_airplane, [], "train: class folders must be airplane, automobile"),
    (lambda tmp_path: forged_npz(tmp_path / "c.npz", (TERABYTE,), np.uint8),
     [], f"x_train: an array of shape ({TERABYTE},) and dtype uint8 of {TERABYTE:,} bytes, {WHOLE_OF_CIFAR10}"),
    (lambda tmp_path: write_npz(tmp_path / "c.npz"), ["--class-names", "plane,car"],
     "class names are for image folders"),
], ids=["plane-for-airplane", "npz-of-a-terabyte", "class-names-of-an-npz"])
def test_the_cli_refuses_a_mislabelled_or_forged_copy_in_one_line(tmp_path, source, flags, problem):
    path = source(tmp_path)
    result = subprocess.run([sys.executable, "-m", "kt_dropout.cli", "train", "--data", path, *flags], cwd=tmp_path,
                            env=offline_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"kt-dropout train: error: {path}") and problem in line, line


@pytest.mark.parametrize("options, message", [
    (["--kt-profile", "quick"], "CIFAR-10 not found: "),
    (["--kt-profile", "smoke", "--kt-train-size", "1000"], "train_size: 1000 is more than the 128 train images"),
], ids=["no-data", "too-large-a-part"])
def test_the_suite_stops_once_with_the_message(tmp_path, options, message):
    """A data error stops the session before any test, instead of failing each test that needs the study."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "benchmarks/test_post.py", "-m", "gpu",
         "--kt-results", str(tmp_path / "results"), *options],
        cwd=ROOT, env={**offline_env(tmp_path), "KT_ALLOW_CPU": "1"}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert output.count(message) == 1, output
    assert "Traceback" not in output and " passed" not in output and " error" not in output.splitlines()[-1]
    assert not any((tmp_path / "results").glob("report-*"))
