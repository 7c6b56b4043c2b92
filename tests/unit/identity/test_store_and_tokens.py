"""The principal store (argon2 passwords, changes recorded) and intelbus's own tokens (EdDSA JWTs)."""
from __future__ import annotations

import base64
import json
import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from identity.principals import IdentityError
from identity.store import PrincipalStore
from identity.tokens import TokenIssuer, TokenRejected, load_or_create_key

PW = "correct horse battery"


@pytest.fixture
def store(tmp_path):
    s = PrincipalStore(tmp_path / "identity" / "principals.db")
    yield s
    s.close()


def test_store_file_and_folder_are_private(store):
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700


def test_password_is_stored_as_argon2id_and_checked(store):
    store.add(actor="root", name="hb-cc", kind="person", region="130000", branch="COMMAND_CENTER",
              roles=["command_center"], password=PW)
    stored = store.db.execute("SELECT password_hash FROM principals").fetchone()[0]
    assert stored.startswith("$argon2id$") and PW not in stored
    p = store.authenticate("hb-cc", PW)
    assert p.region == "130000" and p.roles == {"command_center"}


@pytest.mark.parametrize("name, password, message", [
    ("hb-cc", "wrong password!", "wrong name or password"),
    ("nobody", PW, "wrong name or password"),  # the same words: no hint that the name is unknown
])
def test_wrong_name_or_password_is_refused_alike(store, name, password, message):
    store.add(actor="root", name="hb-cc", kind="person", region="130000", roles=["command_center"], password=PW)
    with pytest.raises(IdentityError, match=message):
        store.authenticate(name, password)


def test_a_disabled_account_cannot_log_in_and_can_again_when_enabled(store):
    store.add(actor="root", name="hb-cc", kind="person", region="130000", roles=["command_center"], password=PW)
    store.set_disabled(actor="root", name="hb-cc", disabled=True)
    with pytest.raises(IdentityError, match="disabled"):
        store.authenticate("hb-cc", PW)
    store.set_disabled(actor="root", name="hb-cc", disabled=False)
    assert store.authenticate("hb-cc", PW).name == "hb-cc"


@pytest.mark.parametrize("kw, message", [
    ({"region": "999999"}, "unknown region code"), ({"region": "13"}, "6-digit"),
    ({"roles": ["admin"]}, "unknown role 'admin'"), ({"clearance": "TOP"}, "unknown clearance"),
    ({"branch": "SWAT"}, "unknown branch"), ({"password": "short"}, "too short"), ({"name": "a b"}, "name 'a b'"),
])
def test_bad_principals_are_refused_naming_the_field(store, kw, message):
    args = {"actor": "root", "name": "x", "kind": "person", "region": "130000", "roles": ["analyst"], "password": PW, **kw}
    with pytest.raises((IdentityError, ValueError), match=message):
        store.add(**args)


def test_grant_revoke_reset_and_every_change_is_recorded(store):
    store.add(actor="root", name="js", kind="person", region="320000", roles=["analyst"], password=PW)
    store.grant(actor="root", name="js", roles=["command_center"], clearance="SECRET")
    store.revoke(actor="root", name="js", roles=["analyst"])
    store.reset_password(actor="root", name="js", password="another long one")
    p = store.get("js")
    assert p.roles == {"command_center"} and p.clearance == "SECRET"
    assert store.authenticate("js", "another long one")
    changes = store.pending_changes()
    assert [(c[2], c[3], c[4]) for c in changes] == [("root", "add", "js"), ("root", "grant", "js"),
                                                    ("root", "revoke", "js"), ("root", "reset", "js")]
    assert PW not in json.dumps(changes)  # no password in the record of a change
    store.mark_sent([c[0] for c in changes])
    assert store.pending_changes() == []
    with pytest.raises(IdentityError, match="does not hold role auditor"):
        store.revoke(actor="root", name="js", roles=["auditor"])


def test_a_system_publishes_for_its_own_region_by_default(store):
    p = store.add(actor="root", name="xl-ztry", kind="system", region="130822", roles=["integrator"])
    assert p.publish_regions == {"130822"} and not p.has_password


# --- tokens ------------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def issued(store, tmp_path):
    p = store.add(actor="root", name="tj-cc", kind="person", region="120000", roles=["command_center"], password=PW)
    key = load_or_create_key(tmp_path / "k" / "token-key.pem")
    issuer = TokenIssuer(key, ttl_s=3600)
    token, claims = issuer.issue(p.identity())
    return issuer, token, claims


def test_key_file_is_private_and_reused(tmp_path):
    path = tmp_path / "k" / "token-key.pem"
    k1 = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path).public_key().public_bytes_raw() == k1.public_key().public_bytes_raw()


def test_a_token_verifies_and_names_its_principal(issued):
    issuer, token, claims = issued
    got = issuer.verify(token)
    assert got.name == "tj-cc" and got.token_id == claims.token_id and got.expires_at - got.issued_at == 3600


def test_an_expired_token_is_refused(store, tmp_path):
    p = store.get("tj-cc") if store.find("tj-cc") else store.add(actor="root", name="tj-cc", kind="person",
                                                                  region="120000", roles=["command_center"], password=PW)
    key = load_or_create_key(tmp_path / "token-key.pem")
    clock = Clock(time.time() - 120)  # issued two minutes ago, valid for one
    issuer = TokenIssuer(key, ttl_s=60, clock=clock)
    past, _ = issuer.issue(p.identity())
    with pytest.raises(TokenRejected, match="token expired"):
        issuer.verify(past)


def test_a_token_signed_by_another_key_is_refused(issued):
    issuer, token, _ = issued
    payload = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(payload, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    with pytest.raises(TokenRejected, match="signature does not verify"):
        issuer.verify(forged)


def test_a_token_whose_claims_were_changed_is_refused(issued):
    issuer, token, _ = issued
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["sub"] = "hb-cc"
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenRejected, match="signature does not verify"):
        issuer.verify(f"{head}.{body}.{sig}")


def test_unsigned_and_hmac_tokens_are_refused(issued):
    issuer, token, _ = issued
    payload = jwt.decode(token, options={"verify_signature": False})
    unsigned = jwt.encode(payload, None, algorithm="none")
    with pytest.raises(TokenRejected):
        issuer.verify(unsigned)
    hmac = jwt.encode(payload, "a guessed shared secret of some length", algorithm="HS256")
    with pytest.raises(TokenRejected, match="not signed with EdDSA|signature"):
        issuer.verify(hmac)
