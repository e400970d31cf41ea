"""The one reader of store JSON files: every kind of damage is one `DamagedFile` naming the file."""

import os
import tracemalloc

import pytest

from kt_dropout.storage.documents import MAX_DOCUMENT_BYTES, DamagedFile, read_json

DAMAGE = {
    "empty": (b"", "is empty"),
    "blank": (b"  \n", "is empty"),
    "cut short": (b'{"seed": 1, "hist', "not JSON"),
    "garbage": (b"\x00\xff\xfe garbage", "not JSON"),
    "a list": (b"[1, 2]", "JSON list, not an object"),
    "a number": (b"3", "JSON int, not an object"),
}


@pytest.mark.parametrize("content, problem", DAMAGE.values(), ids=DAMAGE.keys())
def test_damage_is_one_error_naming_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFile, match=problem) as error:
        read_json(path, "a run record")
    assert error.value.path == path and str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value) and "Errno" not in str(error.value)
    assert path.read_bytes() == content  # reading never changes what it reads


def test_a_folder_and_an_unreadable_file_are_damage_and_a_missing_file_is_absence(tmp_path):
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(DamagedFile, match="is a folder where a lease should be"):
        read_json(tmp_path / "folder.json", "a lease")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", "a lease")
    unreadable = tmp_path / "unreadable.json"
    unreadable.write_text("{}")
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads anything
        pytest.skip("this user reads files whatever their mode")
    with pytest.raises(DamagedFile, match="cannot be read as a lease"):
        read_json(unreadable, "a lease")


def test_a_file_larger_than_any_document_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "run.json"
    with open(huge, "wb") as file:  # sparse: no disk used
        file.truncate(64 * MAX_DOCUMENT_BYTES)
    tracemalloc.start()
    with pytest.raises(DamagedFile, match="larger than a run record can be"):
        read_json(huge, "a run record")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MAX_DOCUMENT_BYTES


def test_a_good_document_is_read(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"seed": 1, "history": [0.5]}', encoding="utf-8")
    assert read_json(path, "a run record") == {"seed": 1, "history": [0.5]}
