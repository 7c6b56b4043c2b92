"""Proof of publisher: every refusal code with a reason a person can act on; rotation; tampering."""
from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from schemas.proof import (ALGORITHM, BAD_HEADER, BAD_SIGNATURE, HEADER_ALG, HEADER_KEY_ID, HEADER_SIGNATURE,
                           REGION_NOT_ALLOWED, REVOKED, REVOKED_KEY, UNKNOWN_KEY, UNSIGNED, Keyring, KeyFileError,
                           Refusal, SigningKey, key_file_document, load_key_file, mac_hex, sign_headers, verify)
from schemas.regions import load_regions

IS_WITHIN = load_regions().is_within
VALUE = b"\x00\x00\x00\x00\x07" + bytes(range(180))  # a wire-format-like value of 185 bytes
K1 = SigningKey("xl-ztry-1", "xl-ztry", b"\x01" * 32, frozenset({"130822"}))
K2 = SigningKey("xl-ztry-2", "xl-ztry", b"\x02" * 32, frozenset({"130822"}))
HEBEI = SigningKey("hb-xczx-1", "hb-xczx", b"\x03" * 32, frozenset({"130000"}))
LOCAL = SigningKey("local-1", "local", b"\x04" * 32, frozenset({"*"}))
OLD = SigningKey("xl-old-1", "xl-old", b"\x05" * 32, frozenset({"130822"}), state=REVOKED)
RING = Keyring([K1, K2, HEBEI, LOCAL, OLD])


def refused(result, code) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.code == code, result
    assert result.stage == "VERIFY"
    return result


def test_the_headers_are_the_contract():
    headers = sign_headers(VALUE, K1)
    assert [name for name, _ in headers] == [HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_ALG]
    assert dict(headers) == {"intelbus-key-id": b"xl-ztry-1",
                             "intelbus-signature": hmac.new(b"\x01" * 32, VALUE, hashlib.sha256).hexdigest().encode(),
                             "intelbus-signature-alg": b"HMAC-SHA256"}
    sig = dict(headers)[HEADER_SIGNATURE]
    assert len(sig) == 64 and sig == sig.lower() and ALGORITHM == "HMAC-SHA256"
    assert mac_hex(K1.secret, VALUE) == sig.decode()


def test_the_mac_from_pads_made_once_is_hmac_sha256_for_keys_shorter_longer_and_equal_to_the_block():
    # RFC 4231 test case 1 and 6 (a key longer than SHA-256's 64-byte block is hashed first)
    assert SigningKey("rfc-1", "rfc", b"\x0b" * 20).mac(b"Hi There").hex() == \
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    assert SigningKey("rfc-6", "rfc", b"\xaa" * 131).mac(b"Test Using Larger Than Block-Size Key - Hash Key First").hex() \
        == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    for size in (16, 32, 63, 64, 65, 200):
        key = SigningKey("k-1", "k", bytes(range(size)) if size < 256 else b"k" * size)
        for value in (b"", VALUE, VALUE * 50):
            assert key.mac(value) == hmac.digest(key.secret, value, "sha256")
            assert key.mac(value) == key.mac(value)  # the pads are copied, never consumed
    assert K1.mac(VALUE) != K2.mac(VALUE)


def test_a_valid_record_gives_its_key_id_for_its_region_and_regions_inside_a_key_s_region():
    assert verify(VALUE, sign_headers(VALUE, K1), RING, "130822", IS_WITHIN) == "xl-ztry-1"
    assert verify(VALUE, sign_headers(VALUE, HEBEI), RING, "130822", IS_WITHIN) == "hb-xczx-1"  # inside Hebei
    assert verify(VALUE, sign_headers(VALUE, LOCAL), RING, "440300", IS_WITHIN) == "local-1"  # '*'
    # headers as a dict, other headers around them, as confluent_kafka may hand them
    assert verify(VALUE, dict(sign_headers(VALUE, K1)), RING, "130822", IS_WITHIN) == "xl-ztry-1"
    assert verify(VALUE, [("trace", b"x")] + sign_headers(VALUE, K1) + [("z", None)], RING, "130822",
                  IS_WITHIN) == "xl-ztry-1"


def test_rotation_records_under_both_keys_verify():
    assert verify(VALUE, sign_headers(VALUE, K1), RING, "130822", IS_WITHIN) == "xl-ztry-1"
    assert verify(VALUE, sign_headers(VALUE, K2), RING, "130822", IS_WITHIN) == "xl-ztry-2"
    assert {k.key_id for k in RING.active("xl-ztry")} == {"xl-ztry-1", "xl-ztry-2"}


def test_unsigned():
    for headers in (None, [], [("trace", b"x")]):
        r = refused(verify(VALUE, headers, RING, "130822", IS_WITHIN), UNSIGNED)
        assert "intelbus-key-id" in r.reason and "intelbus keys" in r.reason


def test_a_value_changed_after_signing_fails():
    headers = sign_headers(VALUE, K1)
    changed = VALUE[:-1] + b"\xff"
    r = refused(verify(changed, headers, RING, "130822", IS_WITHIN), BAD_SIGNATURE)
    assert "xl-ztry-1" in r.reason and "xl-ztry" in r.reason and r.key_id == "xl-ztry-1"
    refused(verify(VALUE + b"\x00", headers, RING, "130822", IS_WITHIN), BAD_SIGNATURE)
    # another system's secret under this key id
    forged = [(HEADER_KEY_ID, b"xl-ztry-1")] + sign_headers(VALUE, HEBEI)[1:]
    refused(verify(VALUE, forged, RING, "130822", IS_WITHIN), BAD_SIGNATURE)


def test_unknown_key():
    stranger = SigningKey("xx-1", "xx", b"\x09" * 32, frozenset({"130822"}))
    r = refused(verify(VALUE, sign_headers(VALUE, stranger), RING, "130822", IS_WITHIN), UNKNOWN_KEY)
    assert "'xx-1'" in r.reason and "intelbus keys list" in r.reason


def test_revoked_key_is_refused_as_revoked_not_unknown():
    r = refused(verify(VALUE, sign_headers(VALUE, OLD), RING, "130822", IS_WITHIN), REVOKED_KEY)
    assert r.reason.startswith("signed with key xl-old-1 of system xl-old, which was revoked")


def test_region_not_allowed_says_which_regions_the_key_covers():
    r = refused(verify(VALUE, sign_headers(VALUE, K2), RING, "110105", IS_WITHIN), REGION_NOT_ALLOWED)
    assert r.reason == "signed with key xl-ztry-2 of system xl-ztry, which may publish for 130822, not for 110105"
    assert str(r).startswith("REGION_NOT_ALLOWED: ")
    # a county key does not cover its province
    refused(verify(VALUE, sign_headers(VALUE, K1), RING, "130000", IS_WITHIN), REGION_NOT_ALLOWED)


@pytest.mark.parametrize("headers, words", [
    ([(HEADER_KEY_ID, b"xl-ztry-1"), (HEADER_SIGNATURE, b"zz" * 32), (HEADER_ALG, b"HMAC-SHA256")], "not hex"),
    ([(HEADER_KEY_ID, b"xl-ztry-1"), (HEADER_SIGNATURE, b"ab" * 16), (HEADER_ALG, b"HMAC-SHA256")], "16 bytes"),
    ([(HEADER_KEY_ID, b"xl-ztry-1"), (HEADER_ALG, b"HMAC-SHA256")], "intelbus-signature is missing"),
    ([(HEADER_SIGNATURE, b"ab" * 32), (HEADER_ALG, b"HMAC-SHA256")], "intelbus-key-id is missing"),
    ([(HEADER_KEY_ID, b"xl-ztry-1"), (HEADER_SIGNATURE, b"ab" * 32)], "intelbus-signature-alg is missing"),
    ([(HEADER_KEY_ID, b"xl-ztry-1"), (HEADER_SIGNATURE, b"ab" * 32), (HEADER_ALG, b"Ed25519")], "'Ed25519'"),
    ([(HEADER_KEY_ID, "键".encode()), (HEADER_SIGNATURE, b"ab" * 32), (HEADER_ALG, b"HMAC-SHA256")], "not ASCII"),
    ([(HEADER_KEY_ID, b"xl-ztry-1"), (HEADER_KEY_ID, b"hb-xczx-1"), (HEADER_SIGNATURE, b"ab" * 32),
      (HEADER_ALG, b"HMAC-SHA256")], "appears twice"),
    ([(HEADER_KEY_ID, None), (HEADER_SIGNATURE, None), (HEADER_ALG, b"HMAC-SHA256")], "not known"),
])
def test_bad_headers(headers, words):
    r = verify(VALUE, headers, RING, "130822", IS_WITHIN)
    assert isinstance(r, Refusal) and words in r.reason, r
    assert r.code == (UNKNOWN_KEY if words == "not known" else BAD_HEADER)


def test_uppercase_hex_is_accepted_and_compared_in_constant_time():
    kid, sig, alg = sign_headers(VALUE, K1)
    assert verify(VALUE, [kid, (HEADER_SIGNATURE, sig[1].upper()), alg], RING, "130822", IS_WITHIN) == "xl-ztry-1"


def test_keys_and_keyring_are_immutable_and_hide_secrets():
    assert "\\x01" not in repr(K1) and "secret" not in repr(K1)
    with pytest.raises(TypeError):
        RING["x"] = K1  # type: ignore[index]
    with pytest.raises(ValueError, match="twice"):
        Keyring([K1, K1])
    with pytest.raises(ValueError, match="at least 16"):
        SigningKey("a-1", "a", b"short", frozenset({"130822"}))
    assert len(RING) == 5 and set(RING) >= {"xl-ztry-1", "local-1"} and RING["local-1"].every_region


def test_key_file_round_trip_and_one_line_errors(tmp_path):
    import json

    path = tmp_path / "k.json"
    path.write_text(json.dumps(key_file_document(HEBEI)))
    assert load_key_file(path) == HEBEI
    assert set(json.loads(path.read_text())) == {"key_id", "system", "secret_hex", "regions"}
    path.write_text('{"key_id": "a-1"}')
    with pytest.raises(KeyFileError, match="missing system, secret_hex, regions"):
        load_key_file(path)
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_key_file(tmp_path / "absent.json")
    path.write_text("{nope")
    with pytest.raises(KeyFileError, match="is not JSON"):
        load_key_file(path)


def test_timing_of_verify_printed_not_asserted(capsys):
    headers = sign_headers(VALUE, HEBEI)  # a region inside the key's: the slower path
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        verify(VALUE, headers, RING, "130822", IS_WITHIN)
    verify_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n):
        sign_headers(VALUE, HEBEI)
    sign_us = (time.perf_counter() - started) / n * 1e6
    with capsys.disabled():
        print(f"\n  verify {verify_us:.2f} µs, sign_headers {sign_us:.2f} µs per 185-byte value")
