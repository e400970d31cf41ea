"""One study shared by several processes: `--shard` shares, leases between concurrent processes, `--devices`."""

import re

import pytest

from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.results import ResultStore
from kt_dropout.study.runner import Study
from kt_dropout.study.shards import parse_shard


def _study(store, shard=None, pack_size=3) -> Study:
    """The smoke profile's whole study (40 runs), opened without data: only planned, never trained."""
    return Study(PROFILES["smoke"], data=None, data_fingerprint="d", store=store, max_pack_size=pack_size,
                 progress=None, shard=shard)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 40, 50])
def test_the_shards_of_a_study_are_whole_packs_disjoint_and_cover_it_whatever_is_stored(tmp_path, count):
    store = ResultStore(tmp_path / "store")
    whole = _study(store)
    packs = {frozenset(pack) for pack in whole._plan(whole.to_train())}
    shares = [_study(store, (index, count)).to_train() for index in range(1, count + 1)]
    assert sorted(map(str, (m for share in shares for m in share))) == sorted(map(str, whole.to_train()))  # each once
    for share in shares:  # whole packs of the study's plan
        assert {p for p in packs if p & set(share)} == {p for p in packs if p <= set(share)}
    if count == 2:  # the share of a machine whose store holds some runs already: its missing runs, same share
        first = _study(store, (1, 2))
        first._attempted.update(first._key(m) for m in shares[0][:4])  # as if stored
        assert first.to_train() == shares[0][4:]


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1/0", "2", "-1/2"])
def test_a_bad_shard_is_refused_naming_the_flag(text):
    with pytest.raises(ValueError, match=rf"^--kt-shard \(env KT_SHARD\): expected I/N.*got '{re.escape(text)}'$"):
        parse_shard("--kt-shard (env KT_SHARD)", text)
    assert parse_shard("--shard", " 2/3 ") == (2, 3)
