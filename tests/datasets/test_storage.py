"""The storage primitive every guarantee rests on: exclusive create, on each backend."""

from __future__ import annotations

import threading

import pytest

from hafen.datasets import Storage
from hafen.errors import StorageError


@pytest.fixture
def storage(url) -> Storage:
    return Storage(url)


def test_put_if_absent_creates_once(storage):
    assert storage.put_if_absent("a/b.json", b"first")
    assert not storage.put_if_absent("a/b.json", b"second")
    assert storage.read_bytes("a/b.json") == b"first"


def test_put_if_absent_races_have_one_winner(storage):
    winners = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        if storage.put_if_absent("race.json", str(i).encode()):
            winners.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert storage.read_bytes("race.json") == str(winners[0]).encode()


def test_listing_walking_deleting(storage):
    storage.write_bytes("d/x.bin", b"12345")
    storage.write_bytes("d/e/y.bin", b"1")
    assert [i.path for i in storage.list("d")] == ["d/x.bin"]
    assert sorted(i.path for i in storage.walk("d")) == ["d/e/y.bin", "d/x.bin"]
    assert storage.list("missing") == []
    info = storage.list("d")[0]
    assert info.size == 5 and info.modified is not None
    storage.delete(["d/x.bin", "d/e/y.bin"])
    assert storage.walk("d") == []


def test_backend_without_exclusive_create_is_refused(tmp_path):
    storage = Storage(str(tmp_path))
    storage.protocol = "ftp"  # stands for any fsspec backend without a conditional create
    with pytest.raises(StorageError, match="exclusive create"):
        storage.put_if_absent("a", b"")


def test_missing_backend_package_is_a_clear_error():
    with pytest.raises(StorageError, match="gcs://bucket/x: a package this backend needs"):
        Storage("gcs://bucket/x")  # gcsfs is not a dependency of hafen
