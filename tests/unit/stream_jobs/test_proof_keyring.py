"""The jobs' keyring follows the key store: a revocation takes effect in a running worker within its check interval."""
from __future__ import annotations

from identity.keys import KeyStore
from schemas.proof import sign_headers
from schemas.regions import load_regions
from stream_jobs.proof import KeyringSource, make_verifier

VALUE = b"\x00\x00\x00\x00\x01avro body"


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_a_revoked_key_is_refused_after_the_next_check_and_a_rotated_one_verifies(tmp_path):
    path = tmp_path / "keys.db"
    clock = Clock()
    source = KeyringSource(path, check_every_s=1.0, clock=clock)
    check = make_verifier(source, load_regions().is_within)
    assert check(VALUE, [], "130822")[0] == "UNSIGNED"  # no store yet: nothing verifies
    with KeyStore(path) as store:
        old = store.create("xl-ztry", ["130822"])
    clock.t += 1.0
    assert check(VALUE, sign_headers(VALUE, old), "130822") is None
    assert check(VALUE, sign_headers(VALUE, old), "110105")[0] == "REGION_NOT_ALLOWED"
    with KeyStore(path) as store:
        new = store.rotate("xl-ztry")
        store.revoke(old.key_id)
    assert check(VALUE, sign_headers(VALUE, old), "130822") is None  # within the interval: not re-read yet
    clock.t += 1.0
    assert check(VALUE, sign_headers(VALUE, old), "130822")[0] == "REVOKED_KEY"
    assert check(VALUE, sign_headers(VALUE, new), "130822") is None
