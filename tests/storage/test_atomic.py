"""Files written whole or not at all get an ordinary new file's mode: a store that a group shares works."""

import os

import pytest

from kt_dropout.storage.atomic import create_text, write_text, write_with


@pytest.fixture
def umask_002():
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_every_way_of_writing_follows_the_umask_not_mkstemps_0600(tmp_path, umask_002):
    """Run records and leases (`create_text`), replaced runs and plans (`write_text`), checkpoints (`write_with`):
    group-readable and -writable under umask 002, as `open` would make them."""
    assert create_text(tmp_path / "run.json", "{}")
    write_text(tmp_path / "plan.json", "{}")
    write_with(tmp_path / "c.npz", lambda file: file.write(b"npz"))
    os.umask(0o077)
    write_text(tmp_path / "private.json", "{}")
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"run.json": 0o664, "plan.json": 0o664, "c.npz": 0o664, "private.json": 0o600}
