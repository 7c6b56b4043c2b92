"""identity.oidc without a provider: keys made here, the JWKS served from a local HTTP server.

The server is real (PyJWKClient fetches over HTTP as it would from Keycloak); only the
provider's token endpoint is replaced by signing tokens in the test.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from identity.oidc import ConfigError, OidcConfig, OidcVerifier, TokenRejected, claim_at, load_oidc_config
from identity.principals import Identity

AUDIENCE = "intelbus"
ROLE_MAP = {"command_center": "command_center", "analyst": "analyst", "intelbus-auditors": "auditor"}


class Provider:
    """A stand-in provider: its keys, a JWKS (and discovery document) over HTTP, token signing."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "key-1"
        self.extra_keys: list[dict] = []
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": provider.issuer, "jwks_uri": provider.jwks_url}
                elif self.path.endswith("/certs"):
                    provider.fetches += 1
                    body = {"keys": [provider.jwk(provider.key, provider.kid), *provider.extra_keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.issuer = f"http://127.0.0.1:{port}/realms/test"
        self.jwks_url = f"{self.issuer}/protocol/openid-connect/certs"

    @staticmethod
    def jwk(key, kid: str) -> dict:
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        return {**data, "kid": kid, "use": "sig", "alg": "RS256"}

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": [AUDIENCE, "account"],
            "sub": "0b5f-uuid",
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "preferred_username": "tj-cc",
            "name": "Tianjin Command Center",
            "agency_region": "120000",
            "agency_branch": "COMMAND_CENTER",
            "clearance": "INTERNAL",
            "realm_access": {"roles": ["command_center", "offline_access", "default-roles-test"]},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key=None, kid=None, **overrides) -> str:
        return jwt.encode(self.claims(**overrides), key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def provider():
    p = Provider()
    yield p
    p.close()


@pytest.fixture
def config(provider):
    return OidcConfig(
        issuer=provider.issuer,
        audience=AUDIENCE,
        jwks_url=provider.jwks_url,
        role_map=ROLE_MAP,
        system_claim="client_id",
    )


@pytest.fixture
def verifier(config):
    return OidcVerifier(config)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def rejected(verifier, token) -> str:
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- accepted -------------------------------------------------------------------------------


def test_a_good_token_maps_to_the_identity(provider, verifier):
    jti = str(uuid.uuid4())
    identity = verifier.verify(provider.token(jti=jti))
    assert identity == Identity(
        name="tj-cc",
        kind="person",
        region="120000",
        branch="COMMAND_CENTER",
        roles=frozenset({"command_center"}),
        clearance="INTERNAL",
        display_name="Tianjin Command Center",
        issuer=provider.issuer,
        token_id=jti,
    )


def test_keys_are_discovered_from_the_issuer_when_no_jwks_url_is_configured(provider):
    verifier = OidcVerifier(OidcConfig(issuer=provider.issuer, audience=AUDIENCE, role_map=ROLE_MAP))
    assert verifier.verify(provider.token()).region == "120000"


def test_several_provider_roles_map_and_unknown_ones_are_ignored(provider, verifier):
    token = provider.token(realm_access={"roles": ["analyst", "intelbus-auditors", "uma_authorization"]})
    assert verifier.verify(token).roles == frozenset({"analyst", "auditor"})


def test_a_token_without_clearance_gets_the_default(provider, verifier):
    assert verifier.verify(provider.token(clearance=None)).clearance == "PUBLIC"


def test_a_token_with_the_system_claim_is_a_system(provider, verifier):
    identity = verifier.verify(provider.token(client_id="jiangsu-feed", preferred_username="service-account-jiangsu-feed"))
    assert identity.kind == "system"


def test_roles_from_a_flat_groups_claim(provider):
    verifier = OidcVerifier(
        OidcConfig(issuer=provider.issuer, jwks_url=provider.jwks_url, roles_claim="groups", role_map={"/js/analysts": "analyst"})
    )
    assert verifier.verify(provider.token(groups=["/js/analysts"])).roles == {"analyst"}


def test_a_rotated_key_is_fetched_when_a_token_names_an_unknown_kid(provider):
    verifier = OidcVerifier(
        OidcConfig(issuer=provider.issuer, jwks_url=provider.jwks_url, role_map=ROLE_MAP, jwks_refetch_cooldown_seconds=0)
    )
    verifier.verify(provider.token())
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    provider.extra_keys.append(provider.jwk(new_key, "key-2"))
    try:
        before = provider.fetches
        assert verifier.verify(provider.token(key=new_key, kid="key-2")).name == "tj-cc"
        assert provider.fetches == before + 1
        # and cached afterwards: a second token with either key needs no fetch
        verifier.verify(provider.token(key=new_key, kid="key-2"))
        verifier.verify(provider.token())
        assert provider.fetches == before + 1
    finally:
        provider.extra_keys.clear()


def test_an_es256_token_verifies_against_an_ec_key(provider):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec-1", "use": "sig", "alg": "ES256"}
    provider.extra_keys.append(jwk)
    try:
        verifier = OidcVerifier(OidcConfig(issuer=provider.issuer, jwks_url=provider.jwks_url, role_map=ROLE_MAP))
        token = jwt.encode(provider.claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
        assert verifier.verify(token).region == "120000"
    finally:
        provider.extra_keys.clear()


# -- rejected -------------------------------------------------------------------------------


def test_expired(provider, verifier):
    now = int(time.time())
    assert "token expired" in rejected(verifier, provider.token(exp=now - 3600, iat=now - 7200))


def test_wrong_issuer(provider, verifier):
    message = rejected(verifier, provider.token(iss="https://sso.elsewhere.example/realms/x"))
    assert message.startswith("token issuer 'https://sso.elsewhere.example/realms/x' is not the configured provider")


def test_wrong_audience(provider, verifier):
    message = rejected(verifier, provider.token(aud="some-other-service"))
    assert "token audience 'some-other-service' does not include 'intelbus'" in message


def test_signed_by_another_key_under_the_providers_kid(provider, verifier):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = rejected(verifier, provider.token(key=other))
    assert message == f"token signature does not verify against {provider.issuer}'s keys"


def test_signed_by_a_key_the_provider_does_not_have(provider, verifier):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = rejected(verifier, provider.token(key=other, kid="attacker-key"))
    assert message.startswith(f"token signature does not verify against {provider.issuer}'s keys")


def test_claims_altered_after_signing(provider, verifier):
    header, payload, signature = provider.token().split(".")
    forged = _b64({**provider.claims(), "clearance": "HIGHLY_SECRET"})
    message = rejected(verifier, f"{header}.{forged}.{signature}")
    assert message == f"token signature does not verify against {provider.issuer}'s keys"


def test_alg_none(provider, verifier):
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': provider.kid})}.{_b64(provider.claims())}."
    assert rejected(verifier, token).startswith("token algorithm 'none' is not accepted")


def test_hs256_signed_with_the_public_key_text(provider, verifier):
    # the classic confusion: a verifier that lets the token choose HS256 would use the public
    # key PEM, which anyone can read, as the HMAC secret
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": provider.kid})
    payload = _b64(provider.claims(clearance="HIGHLY_SECRET"))
    mac = hmac.new(provider.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert rejected(verifier, token).startswith("token algorithm 'HS256' is not accepted")


def test_rs256_header_on_an_ec_key_is_refused(provider, verifier):
    # a token must verify with the algorithm bound to the key, not the one its header names
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec-2", "use": "sig", "alg": "ES256"}
    provider.extra_keys.append(jwk)
    try:
        token = provider.token(kid="ec-2")  # RS256, signed with the RSA key, naming the EC key
        assert rejected(verifier, token).startswith(f"token signature does not verify against {provider.issuer}'s keys")
    finally:
        provider.extra_keys.clear()


def test_no_region_claim(provider, verifier):
    assert rejected(verifier, provider.token(agency_region=None)) == "token has no region claim 'agency_region'"


def test_unknown_region(provider, verifier):
    assert rejected(verifier, provider.token(agency_region="999999")).startswith("unknown region code 999999")


def test_no_mapped_role(provider, verifier):
    token = provider.token(realm_access={"roles": ["offline_access", "uma_authorization"]})
    assert rejected(verifier, token) == "token grants no intelbus role (provider roles: offline_access, uma_authorization)"


def test_unknown_clearance(provider, verifier):
    assert rejected(verifier, provider.token(clearance="TOP")).startswith("token clearance 'TOP' is not one of")


def test_not_a_jwt(verifier):
    assert rejected(verifier, "not-a-token") == "token is not a JWT (expected three dot-separated parts)"


def test_unreachable_provider_is_refused_not_crashed(provider):
    verifier = OidcVerifier(OidcConfig(issuer=provider.issuer, jwks_url="http://127.0.0.1:9/certs", role_map=ROLE_MAP, http_timeout_seconds=1))
    assert f"cannot fetch {provider.issuer}'s keys" in rejected(verifier, provider.token())


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("algs", [("none",), ("HS256",), ("RS256", "HS512")])
def test_config_refuses_symmetric_and_none_algorithms(algs):
    with pytest.raises(ConfigError, match="not allowed"):
        OidcConfig(issuer="https://idp.example", algorithms=algs)


def test_config_refuses_a_role_map_to_an_unknown_role():
    with pytest.raises(ConfigError, match="unknown role 'superuser'"):
        OidcConfig(issuer="https://idp.example", role_map={"admins": "superuser"})


def test_the_example_yaml_loads():
    from ops.settings import REPO_ROOT

    config = load_oidc_config(REPO_ROOT / "ops" / "identity" / "oidc.example.yaml")
    assert config.issuer == "http://127.0.0.1:8180/realms/intelbus"
    assert config.roles_claim == "realm_access.roles"
    assert config.system_claim == "client_id"
    assert config.role_map["command_center"] == "command_center"
    assert config.algorithms == ("RS256", "ES256", "EdDSA")


def test_yaml_with_an_unknown_setting_names_it(tmp_path):
    path = tmp_path / "oidc.yaml"
    path.write_text("issuer: https://idp.example\nclaims:\n  regoin: x\n")
    with pytest.raises(ConfigError, match="unknown claim setting regoin"):
        load_oidc_config(path)


def test_claim_at_follows_dotted_paths_and_prefers_a_whole_dotted_name():
    claims = {"realm_access": {"roles": ["a"]}, "https://x.example/roles": ["b"]}
    assert claim_at(claims, "realm_access.roles") == ["a"]
    assert claim_at(claims, "https://x.example/roles") == ["b"]
    assert claim_at(claims, "realm_access.missing") is None


def test_unknown_branch(provider, verifier):
    assert rejected(verifier, provider.token(agency_branch="tj-psb")).startswith("unknown branch 'tj-psb'")
