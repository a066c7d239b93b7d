"""Azure Blob Storage against Azurite: the exclusive create under faults, credentials, outages.

The conformance suite (every other test module here) already runs on Azure through the
``backend`` fixture; these tests cover what only Azure has: retries of the conditional create
that must never commit twice, where credentials come from, and the service going away.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import uuid

import pandas as pd
import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.storage.blob.aio import BlobClient

import hafen
from hafen.datasets import open_dataset
from hafen.datasets._dataset import storage_for
from hafen.datasets._schema import to_arrow
from hafen.datasets._storage import Storage
from hafen.datasets._storage import _azure as _storage  # the Azure backend's knobs
from hafen.datasets._write import stage_table
from hafen.datasets._write_dataset import commit_staged
from hafen.errors import CommitOutcomeUnknownError, StorageError
from hafen.testing._azurite import ACCOUNT_KEY, ACCOUNT_NAME

AZURE_VARIABLES = [
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_STORAGE_BLOB_ENDPOINT",
]


@pytest.fixture
def no_azure_env(monkeypatch):
    """No ``AZURE_STORAGE_*`` variable is set (monkeypatch restores them after the test)."""
    for name in AZURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def az(azurite, no_azure_env):
    """A fresh ``az://`` URL, with the connection string in the environment for this test."""
    no_azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    fast = dataclasses.replace(_storage.AZURE_RETRY, backoff=0.01)  # fast retries in tests
    no_azure_env.setattr(_storage, "AZURE_RETRY", fast)
    return azurite.url(uuid.uuid4().hex[:8])


def frame(n: int = 4, tag: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"part": [i % 2 for i in range(n)], "tag": [tag] * n, "i": range(n)})


class Faults:
    """Wraps the SDK's ``upload_blob`` of the exclusive create (calls tagged with a token)."""

    def __init__(self, monkeypatch, script):
        self.script = list(script)  # one action per call: "ok", or a function(call) -> None
        self.calls = 0
        original = BlobClient.upload_blob

        async def upload_blob(client, data, *args, **kwargs):
            if _storage._AZURE_TOKEN_KEY not in (kwargs.get("metadata") or {}):
                return await original(client, data, *args, **kwargs)
            self.calls += 1
            action = self.script.pop(0) if self.script else "ok"
            if action == "ok":
                return await original(client, data, *args, **kwargs)
            return await action(original, client, data, *args, **kwargs)

        monkeypatch.setattr(BlobClient, "upload_blob", upload_blob)


async def lands_then_connection_drops(original, client, data, *args, **kwargs):
    await original(client, data, *args, **kwargs)
    raise ServiceResponseError("Connection reset by peer (injected after the blob was stored)")


async def throttled(original, client, data, *args, **kwargs):
    error = HttpResponseError(message="Server Busy (injected)")
    error.status_code = 503
    raise error


async def refused(original, client, data, *args, **kwargs):
    raise ServiceRequestError("Cannot connect to host (injected)")


def test_retry_that_finds_its_own_blob_reports_success(az, no_azure_env):
    storage = Storage(az)
    faults = Faults(no_azure_env, [lands_then_connection_drops])
    assert storage.put_if_absent("log/0.json", b"mine")
    assert faults.calls == 2  # the retry found the blob and recognised it by its token
    assert storage.read_bytes("log/0.json") == b"mine"
    assert not storage.put_if_absent("log/0.json", b"mine")  # another call: the same bytes lose


def test_retry_that_finds_another_writers_blob_reports_the_lost_race(az, no_azure_env):
    storage = Storage(az)

    async def other_writer_wins_then_connection_drops(original, client, data, *args, **kwargs):
        other = {**kwargs, "metadata": {_storage._AZURE_TOKEN_KEY: "another writer"}}
        await original(client, b"theirs", *args, **other)
        raise ServiceResponseError("Connection reset by peer (injected)")

    Faults(no_azure_env, [other_writer_wins_then_connection_drops])
    assert not storage.put_if_absent("log/0.json", b"mine")
    assert storage.read_bytes("log/0.json") == b"theirs"


def test_throttling_and_refused_connections_are_retried(az, no_azure_env):
    storage = Storage(az)
    faults = Faults(no_azure_env, [throttled, refused, throttled])
    assert storage.put_if_absent("x.json", b"data")
    assert faults.calls == 4
    assert storage.read_bytes("x.json") == b"data"


def test_a_lost_response_never_commits_twice(az, no_azure_env):
    hafen.write_dataset(frame(), az, partition_on=["part"])
    faults = Faults(no_azure_env, [lands_then_connection_drops])
    ds = hafen.write_dataset(frame(tag=1), az, mode="append")
    assert faults.calls == 2
    assert ds.version == 1 and open_dataset(az).version == 1
    assert [h["operation"] for h in open_dataset(az).history()] == ["append", "create"]
    assert len(open_dataset(az).read()) == 8


def test_exhausted_retries_are_an_unknown_outcome_and_keep_staged_files(az, no_azure_env):
    before = hafen.write_dataset(frame(), az, partition_on=["part"])
    staged = stage_table(storage_for(az), to_arrow(frame(tag=1)), partition_on=["part"])
    Faults(no_azure_env, [refused] * _storage.AZURE_RETRY.attempts)
    with pytest.raises(CommitOutcomeUnknownError, match="may or may not have landed"):
        commit_staged(az, [staged], mode="append", base=before.state)
    assert open_dataset(az).version == 0
    assert all(storage_for(az).exists(f.path) for f in staged.files)  # never deleted


def test_a_missing_container_is_a_clear_error_without_retries(azurite, az, no_azure_env):
    faults = Faults(no_azure_env, [])
    url = azurite.url("ds", container="no-such-container")
    with pytest.raises(StorageError, match="no-such-container"):
        Storage(url).put_if_absent("x.json", b"")
    assert faults.calls == 1


def test_az_and_abfs_urls_name_the_same_dataset(az):
    hafen.write_dataset(frame(), az, partition_on=["part"])
    same = open_dataset(az.replace("az://", "abfs://", 1))
    assert same.version == 0 and same.num_rows == 4


# -- credentials -----------------------------------------------------------------------------


def roundtrip(url: str, **kwargs) -> None:
    hafen.write_dataset(frame(), url, partition_on=["part"], **kwargs)
    assert open_dataset(url, **kwargs).num_rows == 4


def test_connection_string_in_storage_options(azurite, no_azure_env):
    roundtrip(azurite.url(uuid.uuid4().hex), storage_options=azurite.storage_options)


def test_account_key_and_endpoint_in_storage_options(azurite, no_azure_env):
    options = {
        "account_name": ACCOUNT_NAME,
        "account_key": ACCOUNT_KEY,
        "blob_endpoint": azurite.endpoint,
    }
    roundtrip(azurite.url(uuid.uuid4().hex), storage_options=options)


def test_account_name_and_key_from_the_environment(azurite, no_azure_env):
    no_azure_env.setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT_NAME)
    no_azure_env.setenv("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY)
    # without an endpoint the account's public one is used (nothing is sent here)
    assert Storage("az://c/x").fs.account_url == f"https://{ACCOUNT_NAME}.blob.core.windows.net"
    no_azure_env.setenv("AZURE_STORAGE_BLOB_ENDPOINT", azurite.endpoint)
    roundtrip(azurite.url(uuid.uuid4().hex))


def test_sas_token_and_endpoint_from_the_environment(azurite, no_azure_env):
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas(
        ACCOUNT_NAME,
        ACCOUNT_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(
            read=True, write=True, delete=True, list=True, add=True, create=True
        ),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    no_azure_env.setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT_NAME)
    no_azure_env.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    no_azure_env.setenv("AZURE_STORAGE_BLOB_ENDPOINT", azurite.endpoint)
    roundtrip(azurite.url(uuid.uuid4().hex))


def test_storage_options_from_hafen_toml(azurite, no_azure_env, tmp_path):
    config = tmp_path / "hafen.toml"
    config.write_text(f'[storage_options]\nconnection_string = "{azurite.connection_string}"\n')
    no_azure_env.setenv("HAFEN_CONFIG", str(config))
    roundtrip(azurite.url(uuid.uuid4().hex))


def test_credentials_follow_the_environment_and_stay_out_of_pickles(azurite, no_azure_env):
    url = azurite.url(uuid.uuid4().hex)
    no_azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    roundtrip(url)
    storage = storage_for(url)
    assert ACCOUNT_KEY not in pickle.dumps(storage).decode("latin-1")
    wrong = azurite.connection_string.replace(ACCOUNT_KEY, "d3Jvbmcga2V5" * 4)
    no_azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    with pytest.raises(StorageError, match=url.split("://")[1]):
        open_dataset(url)  # a new key is used at once, not a filesystem cached with the old one


# -- outage ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_azurite_stopped_between_staging_and_commit(azurite, az):
    before = hafen.write_dataset(frame(), az, partition_on=["part"])
    staged = stage_table(storage_for(az), to_arrow(frame(tag=1)), partition_on=["part"])
    azurite.stop()
    try:
        with pytest.raises(CommitOutcomeUnknownError) as caught:
            commit_staged(az, [staged], mode="append", base=before.state)
    finally:
        azurite.start()
    message = str(caught.value)
    assert "may or may not have landed" in message and "00000000000000000001.json" in message
    after = open_dataset(az)
    assert after.version == before.version
    pd.testing.assert_frame_equal(after.read(), before.read())
    # the dataset takes new commits once Azurite is back; the staged files are orphans for vacuum
    assert hafen.write_dataset(frame(tag=2), az, mode="append").version == 1
    orphans = {f.path for f in staged.files}
    assert orphans.isdisjoint(f.path for f in open_dataset(az).files())
    assert all(storage_for(az).exists(p) for p in orphans)
