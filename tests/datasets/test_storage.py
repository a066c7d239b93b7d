"""The storage primitive every guarantee rests on, and the rest of the interface, per backend.

:class:`StorageTests` is one conformance suite (like zarr's ``StoreTests``), subclassed once per
backend: local files, ``memory://``, Azure Blob (Azurite) and S3 (moto). A subclass provides the
``storage`` fixture (a fresh, empty root) and ``failing`` (a storage whose backend fails).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import threading
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from hafen.datasets._storage import (
    AzureStorage,
    LocalStorage,
    MemoryStorage,
    S3Storage,
    Storage,
    _azure,
    _s3,
)
from hafen.errors import StorageError
from hafen.testing import free_port
from hafen.testing._azurite import ACCOUNT_NAME
from hafen.testing._moto import ACCESS_KEY, REGION, SECRET_KEY

RACERS = 8


def fast_retries(monkeypatch, backend: object, policy: str, backoff: float) -> None:
    """The backend's exclusive create retries as often as in production, with short waits."""
    monkeypatch.setattr(
        backend, policy, dataclasses.replace(getattr(backend, policy), backoff=backoff)
    )


def race(storage: Storage, path: str) -> list[int]:
    """Start RACERS threads together, each creating ``path``; return the ones that won."""
    winners: list[int] = []
    barrier = threading.Barrier(RACERS)

    def attempt(i: int) -> None:
        barrier.wait()
        if storage.put_if_absent(path, str(i).encode()):
            winners.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return winners


class StorageTests:
    """What every backend must do; subclasses provide the fixtures."""

    backend: type[Storage] = Storage  # the class ``Storage(url)`` returns for this backend

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError

    @pytest.fixture
    def failing(self) -> Storage:
        """A storage whose backend fails every request (not with "file not found")."""
        raise NotImplementedError

    # -- the exclusive create --------------------------------------------------------------

    def test_put_if_absent_creates_once(self, storage):
        assert storage.put_if_absent("a/b.json", b"first")
        assert not storage.put_if_absent("a/b.json", b"second")
        assert storage.read_bytes("a/b.json") == b"first"

    def test_put_if_absent_races_have_one_winner(self, storage):
        for round_ in range(3):
            path = f"race-{round_}.json"
            winners = race(storage, path)
            assert len(winners) == 1, winners
            assert storage.read_bytes(path) == str(winners[0]).encode()

    def test_put_if_absent_beside_an_ordinary_write(self, storage):
        storage.write_bytes("log/0.json", b"written")
        assert not storage.put_if_absent("log/0.json", b"created")
        assert storage.read_bytes("log/0.json") == b"written"

    # -- reading and writing ---------------------------------------------------------------

    def test_write_read_replace(self, storage):
        storage.write_bytes("d/x.bin", b"12345")
        assert storage.read_bytes("d/x.bin") == b"12345"
        storage.write_bytes("d/x.bin", b"abc")
        assert storage.read_bytes("d/x.bin") == b"abc"
        assert storage.size("d/x.bin") == 3
        storage.write_bytes("empty", b"")
        assert storage.read_bytes("empty") == b"" and storage.size("empty") == 0

    def test_exists(self, storage):
        assert not storage.exists("d/x.bin")
        storage.write_bytes("d/x.bin", b"1")
        assert storage.exists("d/x.bin")
        storage.delete(["d/x.bin"])
        assert not storage.exists("d/x.bin")

    def test_missing_files_raise_file_not_found(self, storage):
        with pytest.raises(FileNotFoundError):
            storage.read_bytes("missing/x.bin")
        with pytest.raises(FileNotFoundError):
            storage.size("missing/x.bin")

    # -- listing -----------------------------------------------------------------------------

    def test_listing_walking_deleting(self, storage):
        storage.write_bytes("d/x.bin", b"12345")
        storage.write_bytes("d/e/y.bin", b"1")
        assert [i.path for i in storage.list("d")] == ["d/x.bin"]
        assert sorted(i.path for i in storage.walk("d")) == ["d/e/y.bin", "d/x.bin"]
        assert sorted(i.path for i in storage.walk("")) == ["d/e/y.bin", "d/x.bin"]
        assert storage.list("missing") == [] and storage.walk("missing") == []
        info = storage.list("d")[0]
        assert info.size == 5 and info.modified is not None
        storage.delete(["d/x.bin", "d/e/y.bin"])
        assert storage.walk("d") == []

    def test_paths_are_relative_to_the_root(self, storage):
        storage.write_bytes("a/b/c.bin", b"1")
        [info] = storage.walk("a")
        assert info.path == "a/b/c.bin"
        assert storage.relative(storage.full("a/b/c.bin")) == "a/b/c.bin"
        assert storage.full("") == storage.root

    def test_listing_sees_another_clients_writes(self, storage):
        other = pickle.loads(pickle.dumps(storage))
        assert storage.list("d") == []
        other.write_bytes("d/x.bin", b"1")
        assert [i.path for i in storage.list("d")] == ["d/x.bin"]
        assert storage.exists("d/x.bin")

    def test_delete_of_missing_files_is_quiet(self, storage):
        storage.write_bytes("d/x.bin", b"1")
        storage.delete(["d/x.bin", "d/gone.bin"])
        storage.delete([])
        assert not storage.exists("d/x.bin")

    def test_modified_times_are_aware_and_ordered(self, storage):
        storage.write_bytes("first", b"1")
        [first] = storage.list("")
        storage.write_bytes("second", b"2")
        second = next(i for i in storage.list("") if i.path == "second")
        assert first.modified is not None and second.modified is not None
        assert first.modified.tzinfo is not None
        # the same machine's clock, within a generous margin (not a duration: a sanity check)
        assert abs(first.modified - dt.datetime.now(dt.UTC)) < dt.timedelta(hours=1)
        resolution = dt.timedelta(seconds=storage.modified_resolution)
        assert second.modified >= first.modified - resolution

    def test_pickles_to_the_same_storage(self, storage):
        storage.write_bytes("x", b"1")
        copy = pickle.loads(pickle.dumps(storage))
        assert type(copy) is type(storage) is self.backend
        assert copy.url == storage.url and copy.protocol == storage.protocol
        assert copy.read_bytes("x") == b"1"

    def test_arrow_writes_a_deep_file_after_create_parent(self, storage):
        full = storage.full("a/b/c/file.bin")
        storage.create_parent(full)
        with storage.arrow_filesystem.open_output_stream(full) as sink:
            sink.write(b"arrow")
        assert storage.read_bytes("a/b/c/file.bin") == b"arrow"
        assert storage.local is (self.backend in (LocalStorage, MemoryStorage))
        assert storage.has_directories is (self.backend is LocalStorage)

    # -- errors ------------------------------------------------------------------------------

    def test_backend_errors_are_storage_errors_naming_the_path(self, failing):
        with pytest.raises(StorageError, match=r"x/y\.bin") as info:
            failing.write_bytes("x/y.bin", b"1")
        assert not isinstance(info.value, FileNotFoundError)
        with pytest.raises(StorageError, match=r"log/0\.json"):
            failing.put_if_absent("log/0.json", b"1")


class TestLocalStorage(StorageTests):
    backend = LocalStorage

    @pytest.fixture
    def storage(self, tmp_path) -> Storage:
        return Storage(str(tmp_path / "root"))

    @pytest.fixture
    def failing(self, tmp_path) -> Storage:
        (tmp_path / "file").write_bytes(b"")  # a file where the root's directory would be
        return Storage(str(tmp_path / "file"))


class TestMemoryStorage(StorageTests):
    backend = MemoryStorage

    @pytest.fixture
    def storage(self) -> Storage:
        return Storage(f"memory://{uuid.uuid4().hex[:8]}/root")

    @pytest.fixture
    def failing(self, monkeypatch) -> Storage:
        storage = Storage(f"memory://{uuid.uuid4().hex[:8]}/root")

        def fail(*args, **kwargs):  # memory:// cannot fail by itself
            raise RuntimeError("injected failure")

        monkeypatch.setattr(storage.fs, "pipe_file", fail)
        return storage


class TestAzureStorage(StorageTests):
    backend = AzureStorage

    @pytest.fixture
    def storage(self, azurite, monkeypatch) -> Storage:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
        return Storage(azurite.url(f"{uuid.uuid4().hex[:8]}/root"))

    @pytest.fixture
    def failing(self, azurite, monkeypatch) -> Storage:
        """A wrong account key: Azurite refuses every request (403)."""
        fast_retries(monkeypatch, _azure, "AZURE_RETRY", 0.01)
        wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmc="
        options = {
            "connection_string": azurite.connection_string.replace(
                azurite.connection_string.split("AccountKey=")[1].split(";")[0], wrong
            )
        }
        assert ACCOUNT_NAME in options["connection_string"]
        return Storage(azurite.url(f"{uuid.uuid4().hex[:8]}/root"), options)


class TestS3Storage(StorageTests):
    """S3 on moto, credentials and endpoint from the AWS SDK's variables, as in production."""

    backend = S3Storage

    @pytest.fixture
    def storage(self, moto_s3, monkeypatch) -> Storage:
        for name, value in moto_s3.environment.items():
            monkeypatch.setenv(name, value)
        return Storage(f"s3://{moto_s3.bucket()}/root")

    @pytest.fixture
    def failing(self) -> Storage:
        """Nothing listens at the endpoint (one attempt, so the test stays quick)."""
        options = {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
                "region_name": REGION,
            },
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
        return Storage(f"s3://hafen-{uuid.uuid4().hex[:8]}/root", options)

    def test_backend_errors_are_storage_errors_naming_the_path(self, failing, monkeypatch):
        fast_retries(monkeypatch, _s3, "S3_RETRY", 0.001)  # the exclusive create's retries
        super().test_backend_errors_are_storage_errors_naming_the_path(failing)


class TestS3StorageOptions(TestS3Storage):
    """The same with credentials and endpoint in ``storage_options`` and no environment."""

    @pytest.fixture
    def storage(self, moto_s3) -> Storage:
        return Storage(f"s3://{moto_s3.bucket()}/root", moto_s3.storage_options)


def test_s3_put_if_absent_retried_after_it_landed_is_still_a_win(moto_s3, monkeypatch):
    """A PUT stored, then the answer lost: the retry meets 412 and the token says "mine"."""
    storage = Storage(f"s3://{moto_s3.bucket()}/root", moto_s3.storage_options)
    fast_retries(monkeypatch, _s3, "S3_RETRY", 0.001)
    original = S3Storage._s3_create
    calls = []

    async def lands_then_drops(self, bucket, key, data, token):
        calls.append(token)
        if len(calls) == 1:
            await original(self, bucket, key, data, token)
            raise ConnectionError("connection reset (injected after the object was stored)")
        return await original(self, bucket, key, data, token)

    monkeypatch.setattr(S3Storage, "_s3_create", lands_then_drops)
    assert storage.put_if_absent("log/0.json", b"mine")
    assert len(calls) == 2 and calls[0] == calls[1]
    assert not storage.put_if_absent("log/0.json", b"theirs")  # another call: another token
    assert storage.read_bytes("log/0.json") == b"mine"


def test_s3_conditional_conflict_is_retried(moto_s3, monkeypatch):
    """409 ConditionalRequestConflict (a racing conditional PUT in flight) is retried."""
    from botocore.exceptions import ClientError

    storage = Storage(f"s3://{moto_s3.bucket()}/root", moto_s3.storage_options)
    fast_retries(monkeypatch, _s3, "S3_RETRY", 0.001)
    original = S3Storage._s3_create
    calls = []

    async def conflict_once(self, bucket, key, data, token):
        calls.append(token)
        if len(calls) == 1:
            error = {"Code": "ConditionalRequestConflict", "Message": "retry"}
            meta = {"HTTPStatusCode": 409}
            raise ClientError({"Error": error, "ResponseMetadata": meta}, "PutObject")
        return await original(self, bucket, key, data, token)

    monkeypatch.setattr(S3Storage, "_s3_create", conflict_once)
    assert storage.put_if_absent("log/0.json", b"1")
    assert len(calls) == 2


def test_s3_gives_up_with_an_unknown_outcome(moto_s3, monkeypatch):
    storage = Storage(f"s3://{moto_s3.bucket()}/root", moto_s3.storage_options)
    fast_retries(monkeypatch, _s3, "S3_RETRY", 0.001)

    async def always_drops(self, bucket, key, data, token):
        raise ConnectionError("connection reset (injected)")

    monkeypatch.setattr(S3Storage, "_s3_create", always_drops)
    with pytest.raises(StorageError, match=r"log/0\.json.*may or may not exist"):
        storage.put_if_absent("log/0.json", b"1")


class _PlainFileSystem(MemoryFileSystem):
    """Stands for any fsspec backend hafen has no class for (no conditional create)."""

    protocol = ("hafenplain",)


def test_backend_without_exclusive_create_is_refused():
    fsspec.register_implementation("hafenplain", _PlainFileSystem, clobber=True)
    storage = Storage("hafenplain://x")
    assert type(storage) is Storage and storage.protocol == "hafenplain"
    storage.write_bytes("a", b"1")  # reading and writing work
    assert storage.read_bytes("a") == b"1"
    with pytest.raises(StorageError, match="exclusive create"):
        storage.put_if_absent("b", b"")


@pytest.mark.parametrize(
    ("url", "backend", "protocol"),
    [
        ("/tmp/x", LocalStorage, "file"),
        ("file:///tmp/x", LocalStorage, "file"),
        ("memory://x", MemoryStorage, "memory"),
        ("s3://bucket/x", S3Storage, "s3"),
        ("s3a://bucket/x", S3Storage, "s3"),
    ],
)
def test_storage_returns_the_backends_class(url, backend, protocol):
    storage = Storage(url)
    assert type(storage) is backend and storage.protocol == protocol
    assert backend(url).url == storage.url  # the subclass can be built directly too


def test_missing_backend_package_is_a_clear_error():
    with pytest.raises(StorageError, match="gcs://bucket/x: a package this backend needs"):
        Storage("gcs://bucket/x")  # gcsfs is not a dependency of hafen
