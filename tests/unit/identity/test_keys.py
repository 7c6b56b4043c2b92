"""The key store: private files, rotation keeps two keys active, revocation, the keyring, key files, the CLI."""
from __future__ import annotations

import json
import os
import stat

import pytest

from identity.keys import (KeyStore, KeyStoreError, default_key_file, ensure_local_key, export_key_file, keys_path)
from ops.settings import Settings
from schemas.proof import (REVOKED_KEY, UNKNOWN_KEY, Keyring, Refusal, load_key_file, sign_headers, verify)
from schemas.regions import load_regions

IS_WITHIN = load_regions().is_within


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def store(tmp_path):
    s = KeyStore(tmp_path / "identity" / "keys.db")
    yield s
    s.close()


def test_the_store_is_private(store, tmp_path):
    assert mode(tmp_path / "identity") == 0o700
    assert mode(tmp_path / "identity" / "keys.db") == 0o600
    assert keys_path(Settings(stack_dir=str(tmp_path))) == tmp_path / "identity" / "keys.db"


def test_create_names_the_key_and_refuses_a_second_first_key(store):
    key = store.create("xl-ztry", ["130822"], actor="op")
    assert (key.key_id, key.system, key.regions, key.state) == ("xl-ztry-1", "xl-ztry", frozenset({"130822"}), "active")
    assert len(key.secret) == 32
    with pytest.raises(KeyStoreError, match="intelbus keys rotate xl-ztry"):
        store.create("xl-ztry", ["130822"], actor="op")
    with pytest.raises(KeyStoreError, match="unknown region code"):
        store.create("other", ["999999"], actor="op")
    with pytest.raises(KeyStoreError, match="at least one region"):
        store.create("other", [], actor="op")
    with pytest.raises(KeyStoreError, match="system"):
        store.create("bad name", ["130822"], actor="op")
    assert store.create("every", ["*", "130822"], actor="op").regions == frozenset({"*"})


def test_rotate_keeps_two_active_with_the_same_regions_and_both_verify(store):
    first = store.create("hb-xczx", ["130000", "131000"], actor="op")
    second = store.rotate("hb-xczx", actor="op")
    assert second.key_id == "hb-xczx-2" and second.regions == first.regions and second.secret != first.secret
    assert [k.key_id for k in store.active("hb-xczx")] == ["hb-xczx-2", "hb-xczx-1"]
    ring = store.keyring()
    value = b"\x00\x00\x00\x00\x01avro"
    for key in (first, second):
        assert verify(value, sign_headers(value, key), ring, "130822", IS_WITHIN) == key.key_id
    with pytest.raises(KeyStoreError, match="no key yet"):
        store.rotate("nobody", actor="op")


def test_revoke_keeps_the_key_in_the_keyring_so_it_is_refused_as_revoked(store):
    first = store.create("xl-ztry", ["130822"], actor="op")
    store.rotate("xl-ztry", actor="op")
    revoked = store.revoke("xl-ztry-1", actor="op")
    assert revoked.state == "revoked"
    assert [k.key_id for k in store.active("xl-ztry")] == ["xl-ztry-2"]
    ring = store.keyring()
    assert isinstance(ring, Keyring) and set(ring) == {"xl-ztry-1", "xl-ztry-2"}
    value = b"\x00\x00\x00\x00\x01avro"
    result = verify(value, sign_headers(value, first), ring, "130822", IS_WITHIN)
    assert isinstance(result, Refusal) and result.code == REVOKED_KEY
    assert verify(value, sign_headers(value, first), Keyring(), "130822", IS_WITHIN).code == UNKNOWN_KEY
    with pytest.raises(KeyStoreError, match="revoked already"):
        store.revoke("xl-ztry-1", actor="op")
    with pytest.raises(KeyStoreError, match="no key 'nope'"):
        store.revoke("nope", actor="op")
    # a rotation after a revocation never reuses an id
    assert store.rotate("xl-ztry", actor="op").key_id == "xl-ztry-3"
    info = {k.key_id: k for k in store.list()}
    assert info["xl-ztry-1"].revoked_ms and info["xl-ztry-2"].revoked_ms is None
    assert not hasattr(info["xl-ztry-1"], "secret")


def test_every_change_is_recorded_with_its_actor_and_no_secret(store):
    key = store.create("xl-ztry", ["130822"], actor="alice")
    store.rotate("xl-ztry", actor="bob")
    store.revoke("xl-ztry-1", actor="carol")
    changes = store.pending_changes()
    assert [(c[2], c[3], c[4]) for c in changes] == [("alice", "keys.create", "xl-ztry-1"),
                                                      ("bob", "keys.rotate", "xl-ztry-2"),
                                                      ("carol", "keys.revoke", "xl-ztry-1")]
    assert all(key.secret.hex() not in c[5] for c in changes)
    assert json.loads(changes[0][5]) == {"system": "xl-ztry", "regions": ["130822"]}
    store.mark_sent([c[0] for c in changes])
    assert store.pending_changes() == []


def test_export_key_file_is_private_and_loads_back(store, tmp_path):
    key = store.create("xl-ztry", ["130822"], actor="op")
    path = export_key_file(key, tmp_path / "out" / "xl.json")
    assert mode(path) == 0o600
    assert json.loads(path.read_text()) == {"key_id": "xl-ztry-1", "system": "xl-ztry", "secret_hex": key.secret.hex(),
                                            "regions": ["130822"]}
    assert load_key_file(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["xl.json"]  # no temporary file left behind


def test_ensure_local_key_is_idempotent_and_allows_every_region(tmp_path):
    settings = Settings(stack_dir=str(tmp_path))
    path = ensure_local_key(settings, actor="up")
    assert path == default_key_file(settings) == tmp_path / "identity" / "keys" / "local.json"
    assert str(path) == settings.signing_key_file
    key = load_key_file(path)
    assert (key.key_id, key.regions) == ("local-1", frozenset({"*"}))
    assert ensure_local_key(settings, actor="up") == path and load_key_file(path) == key
    path.unlink()  # a lost file is exported again, same key
    assert load_key_file(ensure_local_key(settings, actor="up")) == key
    with KeyStore(keys_path(settings)) as s:
        assert len(s.list()) == 1
        s.revoke("local-1", actor="op")
    assert load_key_file(ensure_local_key(settings, actor="up")).key_id == "local-2"  # a revoked one is replaced


def test_the_cli_never_prints_a_secret(tmp_path, monkeypatch, capsys):
    from ops.cli import main

    monkeypatch.setenv("INTELBUS_STACK_DIR", str(tmp_path))
    monkeypatch.setattr("identity.keys_cli._flush", lambda store: None)  # no ClickHouse in unit tests
    assert main(["keys", "create", "xl-ztry", "--region", "130822", "--out", str(tmp_path / "k1.json")]) == 0
    assert main(["keys", "rotate", "xl-ztry"]) == 0
    assert main(["keys", "list", "--json"]) == 0
    assert main(["keys", "revoke", "xl-ztry-1"]) == 0
    assert main(["keys", "list"]) == 0
    out, err = capsys.readouterr()
    secret = json.loads((tmp_path / "k1.json").read_text())["secret_hex"]
    assert secret not in out + err
    assert "created xl-ztry-1 for xl-ztry, may publish for 130822" in out
    assert "still active too: xl-ztry-1" in out and "revoked xl-ztry-1 of xl-ztry; still active: xl-ztry-2" in out
    assert [json.loads(line)["key_id"] for line in out.splitlines() if line.startswith("{")] == ["xl-ztry-1", "xl-ztry-2"]
    assert mode(tmp_path / "k1.json") == 0o600
    assert main(["keys", "revoke", "xl-ztry-1"]) == 2
    assert main(["keys", "export", "xl-ztry-1", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["intelbus keys revoke: key xl-ztry-1 is revoked already",
                                "intelbus keys export: key xl-ztry-1 is revoked: a revoked key is not handed out"]


def _without_write_access(fn) -> str:
    """repr(fn()) or the exception it raised, computed where the files' modes bind: as root (which writes
    whatever the modes say) in a forked child that became `nobody`; as anyone else in this process."""
    if os.geteuid() != 0:
        try:
            return repr(fn())
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no imports from here on (nobody may not read the interpreter's files)
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = repr(fn())
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_verifying_opens_the_store_read_only_so_a_read_only_file_and_directory_serve():
    import shutil
    import sqlite3
    import tempfile

    from stream_jobs.proof import KeyringSource

    top = tempfile.mkdtemp(prefix="intelbus-ro-keys-")  # not tmp_path: `nobody` must reach it
    folder = os.path.join(top, "identity")
    path = os.path.join(folder, "keys.db")
    try:
        with KeyStore(path) as s:
            key = s.create("xl-ztry", ["130822"], actor="op")
        os.chmod(top, 0o755)
        os.chmod(path, 0o444)
        os.chmod(folder, 0o555)
        value = b"\x00\x00\x00\x00\x01avro"

        def check():
            return verify(value, sign_headers(value, key), KeyringSource(path).current(), "130822", IS_WITHIN)

        assert _without_write_access(check) == repr(key.key_id)
        assert (mode(path), mode(folder)) == (0o444, 0o555)  # nothing made writable to read it

        with KeyStore(path, read_only=True) as ro:
            with pytest.raises(KeyStoreError, match=r"cannot revoke: the key store .* is open read-only"):
                ro.revoke(key.key_id)
            with pytest.raises(KeyStoreError, match="read-only"):
                ro.rotate("xl-ztry")
            with pytest.raises(sqlite3.OperationalError, match="readonly"):  # SQLite refuses too, even root
                ro.db.execute("UPDATE signing_keys SET state = 'revoked'")
            assert [k.key_id for k in ro.active("xl-ztry")] == [key.key_id]
        with pytest.raises(KeyStoreError, match="no key store at"):
            KeyStore(os.path.join(folder, "missing.db"), read_only=True)
    finally:
        for p in (folder, path):
            if os.path.exists(p):
                os.chmod(p, 0o700)
        shutil.rmtree(top)
