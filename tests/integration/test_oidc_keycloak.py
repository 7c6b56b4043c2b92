"""identity.oidc against a real Keycloak (fetched from Maven Central, started by ops/keycloak.py).

Tokens come from Keycloak's own token endpoint by the password grant, exactly as the CLI would
get them; nothing here is mocked. Needs Java 21+ (skipped, saying so, without it); a Keycloak
that cannot be fetched or started fails the tests. Does not need the main stack.
"""
from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from identity.oidc import OidcVerifier, TokenRejected, load_oidc_config
from ops.settings import REPO_ROOT

EXAMPLE_CONFIG = REPO_ROOT / "ops" / "identity" / "oidc.example.yaml"
CLIENT = "intelbus-cli"
PASSWORDS = {"tj-cc": "test-only-tj-cc", "js-analyst": "test-only-js-analyst", "hb-secret": "test-only-hb-secret"}


@pytest.fixture(scope="module")
def verifier(keycloak):
    config = load_oidc_config(EXAMPLE_CONFIG)
    assert config.issuer == keycloak.issuer, "ops/identity/oidc.example.yaml must name the local realm"
    return OidcVerifier(config)


def password_grant(keycloak, username: str, password: str) -> httpx.Response:
    return httpx.post(
        keycloak.token_url,
        data={"grant_type": "password", "client_id": CLIENT, "username": username, "password": password, "scope": "openid"},
        timeout=30,
    )


def access_token(keycloak, username: str, password: str | None = None) -> str:
    resp = password_grant(keycloak, username, password or PASSWORDS[username])
    assert resp.status_code == 200, f"{username}: Keycloak said {resp.status_code} {resp.text}"
    return resp.json()["access_token"]


class Admin:
    """Keycloak's admin REST API, as the master realm's bootstrap administrator."""

    def __init__(self, keycloak):
        from ops import keycloak as kc

        resp = httpx.post(
            f"{keycloak.base_url}/realms/master/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "admin-cli", "username": kc.ADMIN_USER, "password": kc.ADMIN_PASSWORD},
            timeout=30,
        )
        assert resp.status_code == 200, f"admin login: {resp.status_code} {resp.text}"
        self.client = httpx.Client(
            base_url=f"{keycloak.base_url}/admin/realms/{keycloak.realm}",
            headers={"Authorization": f"Bearer {resp.json()['access_token']}"},
            timeout=30,
        )

    def create_user(self, username: str, password: str, region: str, role: str) -> str:
        resp = self.client.post("/users", json={
            "username": username, "enabled": True, "emailVerified": True,
            "email": f"{username}@example.invalid", "firstName": "Temporary", "lastName": "Officer",
            "attributes": {"agency_region": [region], "agency_branch": ["INTELLIGENCE"], "clearance": ["INTERNAL"]},
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        })
        assert resp.status_code == 201, f"create user: {resp.status_code} {resp.text}"
        user_id = resp.headers["Location"].rsplit("/", 1)[1]
        role_rep = self.client.get(f"/roles/{role}").json()
        assert self.client.post(f"/users/{user_id}/role-mappings/realm", json=[role_rep]).status_code == 204
        return user_id

    def set_enabled(self, user_id: str, enabled: bool) -> None:
        user = self.client.get(f"/users/{user_id}").json()
        resp = self.client.put(f"/users/{user_id}", json={**user, "enabled": enabled})
        assert resp.status_code == 204, f"update user: {resp.status_code} {resp.text}"

    def delete_user(self, user_id: str) -> None:
        self.client.delete(f"/users/{user_id}")


def test_tianjin_command_center(keycloak, verifier):
    identity = verifier.verify(access_token(keycloak, "tj-cc"))
    assert (identity.name, identity.kind, identity.region) == ("tj-cc", "person", "120000")
    assert identity.roles == {"command_center"}
    assert identity.clearance == "INTERNAL"
    assert identity.issuer == keycloak.issuer
    assert identity.token_id  # Keycloak's jti, for the audit log


def test_jiangsu_analyst(keycloak, verifier):
    identity = verifier.verify(access_token(keycloak, "js-analyst"))
    assert (identity.region, identity.roles, identity.clearance) == ("320000", {"analyst"}, "INTERNAL")


def test_hebei_secret_clearance(keycloak, verifier):
    identity = verifier.verify(access_token(keycloak, "hb-secret"))
    assert (identity.region, identity.roles, identity.clearance) == ("130000", {"analyst"}, "SECRET")


def test_a_service_account_is_a_system(keycloak, verifier):
    resp = httpx.post(
        keycloak.token_url,
        data={"grant_type": "client_credentials", "client_id": "jiangsu-feed", "client_secret": "test-only-jiangsu-feed-secret"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    identity = verifier.verify(resp.json()["access_token"])
    assert (identity.kind, identity.region, identity.roles) == ("system", "320000", {"integrator"})


def test_a_wrong_password_gets_no_token(keycloak):
    resp = password_grant(keycloak, "tj-cc", "not-the-password")
    assert resp.status_code == 401
    assert resp.json().get("error") == "invalid_grant"
    assert "access_token" not in resp.json()


def test_a_token_with_altered_claims_is_rejected(keycloak, verifier):
    header, payload, signature = access_token(keycloak, "js-analyst").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["clearance"] = "HIGHLY_SECRET"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenRejected) as info:
        verifier.verify(f"{header}.{forged}.{signature}")
    assert str(info.value) == f"token signature does not verify against {keycloak.issuer}'s keys"


def test_a_disabled_user_gets_no_new_token(keycloak, verifier):
    # a throwaway user: the realm's demo users stay as the realm file says
    admin = Admin(keycloak)
    username, password = f"tmp-{uuid.uuid4().hex[:8]}", f"test-only-{uuid.uuid4().hex}"
    user_id = admin.create_user(username, password, "320000", "analyst")
    try:
        assert verifier.verify(access_token(keycloak, username, password)).name == username
        admin.set_enabled(user_id, False)
        resp = password_grant(keycloak, username, password)
        assert resp.status_code in (400, 401), resp.text
        assert resp.json().get("error") == "invalid_grant"
        assert "access_token" not in resp.json()
    finally:
        admin.delete_user(user_id)
