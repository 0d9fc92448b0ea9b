"""Encryption at rest (service/crypto.py): master keys, data keys, sealed chunks
and secrets, and the namespace directory that keeps the data keys."""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from service.codec import Codec
from service.crypto import (
    OVERHEAD,
    DataKeys,
    EncryptionKeyMissing,
    MasterKeys,
    load_data_keys,
    open_chunk,
    open_secret,
    parse_master_keys,
    seal_append,
    seal_chunk,
    seal_secret,
    secret_key_id,
)
from service.lifecycle import append_chunk, new_job
from service.namespaces import NamespaceDirectory, merged_config, rewrap_namespaces
from service.settings import Settings
from service.views import namespace_view
from storage_adapters import (
    ConfigurationError,
    CorruptData,
    EventKind,
    EventRecord,
    NamespaceRecord,
    OutputFormat,
    StorageAdapter,
    adapter_for,
)

TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(2000))


def material() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def keys(*ids: str) -> tuple[DataKeys, str]:
    text = ",".join(f"{i}:{material()}" for i in ids)
    return DataKeys(MasterKeys(parse_master_keys(text))), text


def chunk_event(data: bytes, codec: str = "", **fields: object) -> EventRecord:
    values: dict[str, object] = {
        "seq": 3,
        "kind": EventKind.CHUNK,
        "at": 1,
        "data": data,
        "version": 1,
        "index": 0,
        "format": "text",
        "codec": codec,
        "offset": 0,
    }
    values.update(fields)
    return EventRecord(**values)  # type: ignore[arg-type]


# -- master keys --------------------------------------------------------------------


def test_master_keys_parse_from_commas_lines_and_comments() -> None:
    a, b, c = material(), material(), material()
    parsed = parse_master_keys(f"# rotated 2025-01\nnew:{a}\n\n old : {b} , older:{c}\n")
    assert [k.id for k in parsed] == ["new", "old", "older"]
    assert parsed[0].material == base64.b64decode(a)
    assert a not in repr(parsed)  # key material never shows


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no key"),
        ("# only a comment", "no key"),
        ("justbase64" + material(), "not id:base64"),
        (f"bad id:{material()}", "not id:base64"),
        ("k1:not*base64*at*all", "not valid base64"),
        (f"k1:{base64.b64encode(os.urandom(16)).decode()}", "is 16 bytes"),
        ("k1:{m},k1:{m}", "appears twice"),
    ],
)
def test_bad_master_keys_are_refused_without_showing_them(text: str, message: str) -> None:
    text = text.replace("{m}", material())
    with pytest.raises(ValueError, match=message) as caught:
        parse_master_keys(text)
    for part in text.replace(",", ":").split(":"):
        if len(part) > 20:
            assert part not in str(caught.value)


def test_bad_master_keys_stop_the_settings_and_name_the_variable() -> None:
    secret = base64.b64encode(os.urandom(31)).decode()
    with pytest.raises(ConfigurationError, match=r"^AOS_MASTER_KEYS: key 1") as caught:
        Settings.from_env({"AOS_MASTER_KEYS": f"k1:{secret}"})
    assert secret not in str(caught.value)
    good = f"k1:{material()}"
    settings = Settings.from_env({"AOS_MASTER_KEYS": good})
    assert settings.master_keys == good
    assert good not in repr(settings)


def test_key_file_errors_name_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigurationError, match=r"AOS_MASTER_KEY_FILE=.*cannot read"):
        load_data_keys(None, str(missing))
    bad = tmp_path / "bad"
    bad.write_text(f"k1:{material()}\nk2:short\n")
    with pytest.raises(ConfigurationError, match=r"AOS_MASTER_KEY_FILE=.*key 2 \(.k2.\)"):
        load_data_keys(None, str(bad))
    with pytest.raises(ConfigurationError, match="both set"):
        load_data_keys(f"k1:{material()}", str(bad))
    assert load_data_keys(None, None) is None


def test_a_key_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"old:{material()}\n")
    now = [0.0]
    masters = MasterKeys.from_file(path, check_interval=2.0, clock=lambda: now[0])
    assert [k.id for k in masters.all] == ["old"]
    path.write_text(f"new:{material()}\nold:{material()}\n")
    now[0] = 1.0
    assert [k.id for k in masters.all] == ["old"]  # not checked again yet
    now[0] = 2.5
    assert [k.id for k in masters.all] == ["new", "old"]
    assert masters.primary.id == "new"
    path.write_text("new:half-written")  # a broken file keeps the keys read before
    now[0] = 5.0
    assert [k.id for k in masters.all] == ["new", "old"]
    path.write_text(f"new:{material()}\n")
    now[0] = 7.5
    assert [k.id for k in masters.all] == ["new"]


# -- sealed chunks and secrets ------------------------------------------------------


def test_a_chunk_round_trips_and_its_plaintext_is_not_stored() -> None:
    data_keys, _ = keys("m1")
    key = data_keys.current("ns")
    encoded = Codec(max_chunk=1 << 20).encode(TEXT)
    event = chunk_event(encoded.data, encoded.codec)
    sealed = seal_chunk(key, "ns", "job", event)
    assert sealed.codec == "aes+zstd" and sealed.digest is None
    assert len(sealed.data) == len(event.data) + OVERHEAD
    assert b"quick brown fox" not in sealed.data
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(sealed.data)
    opened = open_chunk(key, "ns", "job", sealed)
    assert (opened.data, opened.codec) == (event.data, "zstd")
    assert Codec(max_chunk=1 << 20).decode(opened) == TEXT
    plain = seal_chunk(key, "ns", "job", chunk_event(b"short and raw"))
    assert plain.codec == "aes" and b"short" not in plain.data
    assert open_chunk(key, "ns", "job", plain).data == b"short and raw"
    # a fresh nonce each time
    assert seal_chunk(key, "ns", "job", event).data != sealed.data


def test_a_tampered_chunk_fails() -> None:
    data_keys, _ = keys("m1")
    key = data_keys.current("ns")
    sealed = seal_chunk(key, "ns", "job", chunk_event(b"0123456789" * 10))
    for at in (0, 15, len(sealed.data) - 1):  # nonce, ciphertext, tag
        data = bytearray(sealed.data)
        data[at] ^= 1
        with pytest.raises(CorruptData, match="altered or moved"):
            open_chunk(key, "ns", "job", dataclasses.replace(sealed, data=bytes(data)))
    with pytest.raises(CorruptData):
        open_chunk(key, "ns", "job", dataclasses.replace(sealed, data=sealed.data[:20]))


@pytest.mark.parametrize(
    ("namespace", "job_id", "change"),
    [
        ("other", "job", {}),
        ("ns", "other-job", {}),
        ("ns", "job", {"version": 2}),
        ("ns", "job", {"index": 1}),
        ("ns", "job", {"offset": 100}),
        ("ns", "job", {"format": "binary"}),
        ("ns", "job", {"codec": "aes+zstd"}),
    ],
)
def test_a_chunk_moved_or_relabelled_fails(
    namespace: str, job_id: str, change: dict[str, object]
) -> None:
    data_keys, _ = keys("m1")
    key = data_keys.current("ns")
    sealed = seal_chunk(key, "ns", "job", chunk_event(b"payload " * 20))
    with pytest.raises(CorruptData):
        open_chunk(key, namespace, job_id, dataclasses.replace(sealed, **change))  # type: ignore[arg-type]


def test_another_key_does_not_open_a_chunk() -> None:
    mine, _ = keys("m1")
    theirs, _ = keys("m1")  # same id, other material
    sealed = seal_chunk(mine.current("ns"), "ns", "job", chunk_event(b"payload " * 20))
    with pytest.raises(CorruptData):
        open_chunk(theirs.current("ns"), "ns", "job", sealed)
    # and one namespace's key is not another's
    with pytest.raises(CorruptData):
        open_chunk(mine.current("ns2"), "ns", "job", sealed)


def test_a_secret_round_trips_and_is_bound_to_its_namespace() -> None:
    data_keys, _ = keys("m1")
    key = data_keys.current("ns")
    stored = seal_secret(key, "ns", "whsec_abc")
    assert stored.startswith("enc:v1:dk-m1:") and "whsec_abc" not in stored
    assert secret_key_id(stored) == "dk-m1" and secret_key_id("whsec_abc") is None
    assert open_secret(key, "ns", stored) == "whsec_abc"
    with pytest.raises(CorruptData):
        open_secret(key, "other", stored)
    with pytest.raises(CorruptData):
        open_secret(key, "ns", stored[:-8] + "AAAAAAA=")


# -- data keys and master key rotation ----------------------------------------------


def test_data_keys_are_the_same_on_every_node() -> None:
    _, text = keys("m1")
    node_a = DataKeys(MasterKeys(parse_master_keys(text)))
    node_b = DataKeys(MasterKeys(parse_master_keys(text)))
    sealed = seal_chunk(node_a.current("ns"), "ns", "j", chunk_event(b"x" * 100))
    # two nodes that made the namespace's key at once made the same key
    assert open_chunk(node_b.current("ns"), "ns", "j", sealed).data == b"x" * 100
    assert node_a.current("ns").id == "dk-m1"
    assert node_a.current("ns").material != node_a.current("ns2").material


def test_data_keys_unwrap_with_an_old_master_and_after_rewrapping() -> None:
    old, new = f"old:{material()}", f"new:{material()}"
    before = DataKeys(MasterKeys(parse_master_keys(old)))
    key = before.current("ns")
    entries = [before.wrap("ns", key, 1)]
    assert entries[0]["masterKeyId"] == "old"
    sealed = seal_chunk(key, "ns", "j", chunk_event(b"kept across rotation"))

    # rotation: the new key is primary, the old one still unwraps
    rotated = DataKeys(MasterKeys(parse_master_keys(f"{new},{old}")))
    assert rotated.resolve("ns", "dk-old", entries).material == key.material
    assert rotated.current("ns").id == "dk-new"  # new data gets the new master's key
    rewrapped, count = rotated.rewrap("ns", entries)
    assert count == 1 and rewrapped[0]["masterKeyId"] == "new"
    assert rewrapped[0]["id"] == "dk-old" and rewrapped[0]["createdAt"] == 1
    assert rotated.rewrap("ns", rewrapped)[1] == 0

    # the old master is gone: only the rewrapped entry still gives the key
    after = DataKeys(MasterKeys(parse_master_keys(new)))
    with pytest.raises(EncryptionKeyMissing, match="wrapped by master key 'old'"):
        after.resolve("ns", "dk-old", entries)
    key_again = after.resolve("ns", "dk-old", rewrapped)
    assert open_chunk(key_again, "ns", "j", sealed).data == b"kept across rotation"
    # a wrapped key is bound to its namespace
    with pytest.raises(CorruptData, match="does not unwrap"):
        DataKeys(MasterKeys(parse_master_keys(new))).resolve("other", "dk-old", rewrapped)


def test_an_append_is_sealed_with_its_version_key() -> None:
    data_keys, _ = keys("m2", "m1")
    codec = Codec(max_chunk=1 << 20)
    job = new_job(
        namespace="ns",
        job_id="j",
        now=1,
        fingerprint="f",
        metadata={},
        webhook_url=None,
        ttl=None,
    ).job
    first = codec.encode(TEXT)
    old_key = data_keys.resolve("ns", "dk-m1", [])
    change = append_chunk(job, first, OutputFormat.TEXT, "text/plain", 2)
    sealed = seal_append(change, old_key, lambda key_id: pytest.fail("no lookup"))
    version = sealed.job.versions[0]
    assert version.key_id == "dk-m1"
    assert version.stored_size == len(first.data) + OVERHEAD
    assert version.max_chunk == len(first.data) + OVERHEAD
    assert version.size == len(TEXT) and version.zstd_size == len(first.data)
    chunk = sealed.events[-1]
    assert chunk.codec == "aes+zstd" and chunk.data != change.events[-1].data
    # the version keeps its key when the namespace's current key changes
    looked_up: list[str] = []

    def lookup(key_id: str) -> object:
        looked_up.append(key_id)
        return old_key

    second = append_chunk(sealed.job, codec.encode(b"more"), OutputFormat.TEXT, "text/plain", 3)
    again = seal_append(second, data_keys.current("ns"), lookup)  # type: ignore[arg-type]
    assert looked_up == ["dk-m1"] and again.job.versions[0].key_id == "dk-m1"
    assert open_chunk(old_key, "ns", "j", again.events[-1]).data == b"more"
    # encryption off: the change as it was
    assert seal_append(second, None, lookup) is second  # type: ignore[arg-type]


# -- the namespace directory --------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[StorageAdapter]:
    opened = adapter_for("memory://")
    await opened.open()
    yield opened
    await opened.close()


async def test_secrets_are_stored_sealed_and_shown_in_clear(store: StorageAdapter) -> None:
    data_keys, _ = keys("m1")
    directory = NamespaceDirectory(store, ttl=10, keys=data_keys)
    config = merged_config({"webhookUrl": None}, None, "whsec_" + "A" * 40, 1)
    stored = await directory.put(NamespaceRecord("ns", config, 1, 1))
    raw = await store.get_namespace("ns")
    assert raw is not None and raw.config == stored.config
    assert "whsec_" not in str(raw.config)
    assert [e["id"] for e in raw.config["dataKeys"]] == ["dk-m1"]
    view = namespace_view(directory.reveal(raw))
    assert [s["secret"] for s in view["webhookSecrets"]] == ["whsec_" + "A" * 40]
    assert "dataKeys" not in view and "dk-m1" not in str(view)
    hooks = await directory.hooks("ns")
    assert hooks.secrets == ("whsec_" + "A" * 40,)
    # a PUT of the settings keeps the data keys; the view still hides them
    again = merged_config({"webhookUrl": "https://x.example"}, raw, None, 2)
    assert again["dataKeys"] == raw.config["dataKeys"]
    # without master keys, the sealed secrets are a clear error, not a crash
    keyless = NamespaceDirectory(store, ttl=10)
    with pytest.raises(EncryptionKeyMissing, match="no master keys"):
        keyless.reveal(raw)
    with pytest.raises(EncryptionKeyMissing):
        await keyless.hooks("ns")
    changed = NamespaceRecord("ns", {**raw.config, "webhookUrl": "https://x.example"}, 1, 3)
    with pytest.raises(EncryptionKeyMissing):
        await keyless.put(changed)  # refused before anything is written
    assert await store.get_namespace("ns") == raw


async def test_no_writer_drops_a_data_key(store: StorageAdapter) -> None:
    """A writer that read the row before another node added a data key
    keeps that key when it writes."""
    old_keys, old_text = keys("m1")
    node_a = NamespaceDirectory(store, ttl=10, keys=old_keys)
    await node_a.put(NamespaceRecord("ns", merged_config({}, None, None, 1), 1, 1))
    read_before = await store.get_namespace("ns")
    assert read_before is not None

    new = f"m2:{material()}"
    node_b = NamespaceDirectory(
        store, ttl=10, keys=DataKeys(MasterKeys(parse_master_keys(f"{new},{old_text}")))
    )
    key = await node_b.chunk_key("ns")
    assert key is not None and key.id == "dk-m2"
    stored = await store.get_namespace("ns")
    assert stored is not None
    assert [e["id"] for e in stored.config["dataKeys"]] == ["dk-m2", "dk-m1"]

    # node A writes the row it read before node B added its key
    await node_a.put(
        NamespaceRecord("ns", merged_config({"webhookUrl": None}, read_before, None, 2), 1, 2)
    )
    stored = await store.get_namespace("ns")
    assert stored is not None
    assert {e["id"] for e in stored.config["dataKeys"]} == {"dk-m1", "dk-m2"}


async def test_rewrap_moves_every_namespace_to_the_primary(store: StorageAdapter) -> None:
    old = f"old:{material()}"
    before = NamespaceDirectory(store, ttl=10, keys=DataKeys(MasterKeys(parse_master_keys(old))))
    for name in ("a", "b", "c"):
        await before.put(NamespaceRecord(name, merged_config({}, None, None, 1), 1, 1))
    # a namespace from before encryption, with its secret in clear
    await store.put_namespace(NamespaceRecord("d", merged_config({}, None, None, 1), 1, 1))
    new = f"new:{material()}"
    rotated = DataKeys(MasterKeys(parse_master_keys(f"{new},{old}")))
    report = await rewrap_namespaces(store, rotated, page=2)
    assert (report.primary, report.namespaces, report.updated) == ("new", 4, 4)
    assert (report.rewrapped, report.sealed_secrets, report.failed) == (3, 1, ())
    assert (await rewrap_namespaces(store, rotated)).updated == 0  # nothing left to do

    after = NamespaceDirectory(store, ttl=10, keys=DataKeys(MasterKeys(parse_master_keys(new))))
    for name in ("a", "b", "c", "d"):
        record = await store.get_namespace(name)
        assert record is not None
        assert {e["masterKeyId"] for e in record.config["dataKeys"]} == {"new"}
        secret = after.reveal(record).config["webhookSecrets"][0]["secret"]
        assert secret.startswith("whsec_")
    # a store whose keys this node cannot unwrap is reported, not rewritten
    stranger = DataKeys(MasterKeys(parse_master_keys(f"other:{material()}")))
    report = await rewrap_namespaces(store, stranger)
    assert report.failed == ("a", "b", "c", "d") and report.updated == 0
