"""Tokens from a police force's own directory: OIDC access tokens verified against the provider's keys.

A force that already runs an identity provider (Keycloak, ADFS, ...) should not keep a second
list of its people in intelbus. Its access tokens are accepted instead: a JWT signed by the
provider, checked against the provider's published keys (JWKS), whose claims say the agency
(region code + branch), the roles and the clearance. Which claim says what, and which provider
role or group means which intelbus role, is configuration (`OidcConfig`, loaded from YAML; see
ops/identity/oidc.example.yaml), because every directory names these differently.

The result is the same `Identity` the local login produces, so entitlement does not care which
door a caller came through. Every refusal is a `TokenRejected` whose message is one line a
person can act on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import jwt
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError

from identity.principals import CLEARANCES, Identity, IdentityError, check_clearance, check_role
from schemas.regions import load_branches, validate_region_code

# Asymmetric algorithms only. HS* would let anyone holding the (public) verification key mint
# tokens -- the classic RS256/HS256 confusion -- and `none` is no signature at all.
SAFE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")


class TokenRejected(ValueError):
    """A token intelbus does not accept; str() is one line saying what is wrong with it."""


class ProviderUnavailable(TokenRejected):
    """The provider's keys could not be fetched: not the token's fault.

    A subclass of TokenRejected so a caller that only knows "accepted or not" still refuses;
    a gateway that wants to answer 503 rather than 401 catches this one first.
    """


class ConfigError(ValueError):
    """An OIDC configuration that is not usable; str() names the setting and why."""


@dataclass(frozen=True)
class OidcConfig:
    """How to trust one provider and how to read its tokens.

    issuer: the provider's issuer URL, compared exactly with the token's `iss`.
    audience: if set, the token's `aud` must contain it (a token meant for another service
      is not accepted here). jwks_url: if unset, discovered from
      `<issuer>/.well-known/openid-configuration`.
    *_claim: claim names; a dotted name is a path into nested objects (Keycloak puts realm
      roles at `realm_access.roles`). system_claim: if set and present in a token, the caller
      is a system, not a person (Keycloak puts `client_id` only in service-account tokens).
    role_map: provider role or group name -> intelbus role; provider roles not listed are
      ignored, so a directory's own roles never leak into intelbus by name alone.
    default_clearance: the clearance of a token without a clearance claim.
    """

    issuer: str
    audience: str | None = None
    jwks_url: str | None = None
    region_claim: str = "agency_region"
    branch_claim: str = "agency_branch"
    roles_claim: str = "realm_access.roles"
    clearance_claim: str = "clearance"
    name_claim: str = "preferred_username"
    display_name_claim: str = "name"
    system_claim: str | None = None
    role_map: Mapping[str, str] = field(default_factory=dict)
    default_clearance: str = "PUBLIC"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: float = 30.0
    # how long fetched keys are trusted before the JWKS is fetched again, and the least time
    # between two fetches forced by an unknown key id (so a stream of made-up kids cannot
    # turn every request into a request to the provider)
    jwks_lifespan_seconds: float = 300.0
    jwks_refetch_cooldown_seconds: float = 30.0
    http_timeout_seconds: float = 5.0

    def __post_init__(self):
        if not self.issuer:
            raise ConfigError("oidc: issuer is required")
        algorithms = tuple(self.algorithms)
        unsafe = [a for a in algorithms if a not in SAFE_ALGORITHMS]
        if unsafe:
            raise ConfigError(
                f"oidc: algorithms {', '.join(map(str, unsafe))} not allowed (only asymmetric: {', '.join(SAFE_ALGORITHMS)})"
            )
        if not algorithms:
            raise ConfigError("oidc: algorithms is empty")
        object.__setattr__(self, "algorithms", algorithms)
        try:
            for provider_role, role in self.role_map.items():
                check_role(role)
            check_clearance(self.default_clearance)
        except IdentityError as e:
            raise ConfigError(f"oidc: {e}") from None
        # frozen means frozen: a shared config's role map must not change under a running verifier
        object.__setattr__(self, "role_map", MappingProxyType(dict(self.role_map)))

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


# YAML layout -> OidcConfig field; `claims:` groups the claim names so the file reads as a mapping
_CLAIM_KEYS = {
    "region": "region_claim",
    "branch": "branch_claim",
    "roles": "roles_claim",
    "clearance": "clearance_claim",
    "name": "name_claim",
    "display_name": "display_name_claim",
    "system": "system_claim",
}
_TOP_KEYS = {
    "issuer", "audience", "jwks_url", "role_map", "default_clearance", "algorithms", "leeway_seconds",
    "jwks_lifespan_seconds", "jwks_refetch_cooldown_seconds", "http_timeout_seconds",
}


def load_oidc_config(path: str | Path) -> OidcConfig:
    """An OidcConfig from a YAML file (layout: ops/identity/oidc.example.yaml)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"oidc: cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"oidc: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"oidc: {path} must hold a mapping (issuer:, claims:, role_map:, ...)")
    if isinstance(raw.get("oidc"), dict):  # allow the settings to sit under one `oidc:` key
        raw = raw["oidc"]
    unknown = sorted(set(raw) - _TOP_KEYS - {"claims"})
    if unknown:
        raise ConfigError(f"oidc: {path}: unknown setting {', '.join(unknown)}")
    values = {k: v for k, v in raw.items() if k != "claims"}
    claims = raw.get("claims") or {}
    if not isinstance(claims, dict):
        raise ConfigError(f"oidc: {path}: claims must be a mapping (region:, branch:, roles:, ...)")
    unknown = sorted(set(claims) - set(_CLAIM_KEYS))
    if unknown:
        raise ConfigError(f"oidc: {path}: unknown claim setting {', '.join(unknown)} (known: {', '.join(_CLAIM_KEYS)})")
    values.update({_CLAIM_KEYS[k]: v for k, v in claims.items()})
    if "algorithms" in values:
        values["algorithms"] = tuple(values["algorithms"] or ())
    values["role_map"] = {str(k): v for k, v in (values.get("role_map") or {}).items()}
    try:
        return OidcConfig(**values)
    except TypeError as e:
        raise ConfigError(f"oidc: {path}: {e}") from None


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path ('realm_access.roles'), or None if any step is missing.

    A claim whose own name holds a dot (some providers use URL-like names) is found first by
    its whole name.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


def _names(value: Any) -> list[str]:
    """Role or group names from a claim: a list, or one space-separated string (as `scope` is)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _single(value: Any) -> Any:
    """A single-valued claim: providers emit a one-item list for multivalued attributes."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


class OidcVerifier:
    """Verifies one provider's access tokens and turns them into Identities.

    The JWKS is fetched on first use (not at construction, so a process can start while the
    provider is down) and kept for jwks_lifespan_seconds; a token signed with a key id not in
    the cached set forces one refetch (key rotation), at most once per cooldown. Keys are not
    cached per kid beyond the set's lifespan: a key the provider withdraws stops verifying
    within that lifespan.
    """

    def __init__(self, config: OidcConfig):
        self.config = config
        self._jwks: PyJWKClient | None = None

    # -- keys ---------------------------------------------------------------------------

    def _jwks_client(self) -> PyJWKClient:
        if self._jwks is None:
            url = self.config.jwks_url or self._discover_jwks_url()
            self._jwks = PyJWKClient(
                url,
                cache_jwk_set=True,
                lifespan=self.config.jwks_lifespan_seconds,
                cooldown_duration=self.config.jwks_refetch_cooldown_seconds,
                timeout=self.config.http_timeout_seconds,
            )
        return self._jwks

    def _discover_jwks_url(self) -> str:
        import httpx

        url = self.config.discovery_url
        try:
            resp = httpx.get(url, timeout=self.config.http_timeout_seconds)
            resp.raise_for_status()
            doc = resp.json()
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            raise ProviderUnavailable(f"cannot read the provider's discovery document {url}: {e}") from None
        # OIDC Discovery 4.3: the document's issuer must be the one we asked; otherwise the
        # keys it points at belong to some other provider
        if doc.get("issuer") != self.config.issuer:
            raise ProviderUnavailable(
                f"discovery document {url} names issuer {doc.get('issuer')!r}, not the configured {self.config.issuer}"
            )
        if not doc.get("jwks_uri"):
            raise ProviderUnavailable(f"discovery document {url} has no jwks_uri")
        return doc["jwks_uri"]

    def _signing_key(self, kid: str | None):
        issuer = self.config.issuer
        if not kid:
            raise TokenRejected(f"token has no key id (kid), so it cannot be checked against {issuer}'s keys")
        try:
            return self._jwks_client().get_signing_key(kid)
        except PyJWKClientConnectionError as e:
            raise ProviderUnavailable(f"cannot fetch {issuer}'s keys: {e}") from None
        except PyJWKClientError:
            raise TokenRejected(
                f"token signature does not verify against {issuer}'s keys (no key with id {kid!r})"
            ) from None

    # -- verification -------------------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """The Identity a valid token stands for, or TokenRejected saying why not."""
        header, unverified = self._peek(token)
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise TokenRejected(
                f"token algorithm {alg!r} is not accepted (accepted: {', '.join(self.config.algorithms)})"
            )
        # The issuer is read before any key is fetched: a token from another provider is told
        # so plainly, and never makes us fetch anything. The signature is still checked below.
        if unverified.get("iss") != self.config.issuer:
            raise TokenRejected(f"token issuer {unverified.get('iss')!r} is not the configured provider {self.config.issuer}")
        key = self._signing_key(header.get("kid"))
        claims = self._decode(token, key)
        return self._identity(claims)

    def _peek(self, token: str) -> tuple[dict, dict]:
        """Header and claims without checking anything, to choose the key and word the errors."""
        if not isinstance(token, str) or token.count(".") != 2:
            raise TokenRejected("token is not a JWT (expected three dot-separated parts)")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError as e:
            raise TokenRejected(f"token is not a readable JWT: {e}") from None
        return header, claims

    def _decode(self, token: str, key) -> dict:
        issuer = self.config.issuer
        options = {"require": ["exp", "iss"], "verify_aud": self.config.audience is not None}
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(self.config.algorithms),
                issuer=issuer,
                audience=self.config.audience,
                leeway=self.config.leeway_seconds,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp)) if isinstance(exp, (int, float)) else "?"
            raise TokenRejected(f"token expired (at {when}); get a new one from {issuer}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected(f"token signature does not verify against {issuer}'s keys") from None
        except jwt.InvalidAlgorithmError as e:
            raise TokenRejected(f"token signature does not verify against {issuer}'s keys ({e})") from None
        except jwt.InvalidAudienceError:
            aud = jwt.decode(token, options={"verify_signature": False}).get("aud")
            raise TokenRejected(f"token audience {aud!r} does not include {self.config.audience!r}: it was issued for another service") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"token issuer is not the configured provider {issuer}") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenRejected(f"token has no {e.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token is not valid yet (nbf/iat in the future): check the clocks") from None
        except jwt.InvalidTokenError as e:
            raise TokenRejected(f"token is not valid: {e}") from None

    def _identity(self, claims: dict) -> Identity:
        c = self.config
        region_raw = _single(claim_at(claims, c.region_claim))
        if region_raw in (None, ""):
            raise TokenRejected(f"token has no region claim {c.region_claim!r}")
        try:
            region = validate_region_code(str(region_raw))
        except ValueError as e:
            raise TokenRejected(str(e)) from None
        branch = _single(claim_at(claims, c.branch_claim)) if c.branch_claim else None
        if branch not in (None, "") and str(branch) not in load_branches():
            raise TokenRejected(f"unknown branch {branch!r} in claim {c.branch_claim!r} "
                                "(intelbus routes by the codes of schemas/codes/branches.csv)")
        provider_roles = _names(claim_at(claims, c.roles_claim))
        roles = frozenset(c.role_map[r] for r in provider_roles if r in c.role_map)
        if not roles:
            listed = ", ".join(provider_roles) if provider_roles else "none"
            raise TokenRejected(f"token grants no intelbus role (provider roles: {listed})")
        clearance = _single(claim_at(claims, c.clearance_claim)) if c.clearance_claim else None
        clearance = c.default_clearance if clearance in (None, "") else str(clearance)
        if clearance not in CLEARANCES:
            raise TokenRejected(f"token clearance {clearance!r} is not one of {', '.join(CLEARANCES)}")
        name = _single(claim_at(claims, c.name_claim)) or claims.get("sub")
        if not name:
            raise TokenRejected(f"token has neither a {c.name_claim!r} nor a 'sub' claim: whose is it?")
        system = c.system_claim is not None and claim_at(claims, c.system_claim) not in (None, "")
        return Identity(
            name=str(name),
            kind="system" if system else "person",
            region=region,
            branch="" if branch is None else str(branch),
            roles=roles,
            clearance=clearance,
            display_name=str(_single(claim_at(claims, c.display_name_claim)) or "") if c.display_name_claim else "",
            issuer=c.issuer,
            token_id=str(claims.get("jti") or ""),
        )


__all__ = [
    "ConfigError", "OidcConfig", "OidcVerifier", "ProviderUnavailable", "TokenRejected",
    "claim_at", "load_oidc_config", "SAFE_ALGORITHMS",
]
