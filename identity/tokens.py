"""intelbus's own tokens: short-lived JWTs signed with the gateway's Ed25519 key.

Only the gateway holds the private key (`<stack>/identity/token-key.pem`, mode 0600) and
issues tokens after a password login; it verifies them on every request, together with
the principal's current state in the store (a disabled account's unexpired token is
refused). EdDSA, not HMAC: a verifier elsewhere (a jobs worker, a second gateway) can be
given the public key without being able to mint tokens.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from identity.principals import Identity

ISSUER = "intelbus"
AUDIENCE = "intelbus-gateway"


class TokenRejected(ValueError):
    """A token that grants nothing; str() is the one-line reason shown to the caller."""


@dataclass(frozen=True)
class Claims:
    name: str
    token_id: str
    expires_at: float
    issued_at: float


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def key_path(settings) -> Path:
    return settings.stack_path / "identity" / "token-key.pem"


class TokenIssuer:
    def __init__(self, key: Ed25519PrivateKey, *, ttl_s: float = 3600.0, clock=time.time):
        self.key = key
        self.public_key = key.public_key()
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self, identity: Identity) -> tuple[str, Claims]:
        now = self.clock()
        claims = Claims(name=identity.name, token_id=uuid.uuid4().hex, issued_at=now, expires_at=now + self.ttl_s)
        payload = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": identity.name, "jti": claims.token_id,
            "iat": int(now), "nbf": int(now) - 5, "exp": int(claims.expires_at),
            # informative only: the gateway takes roles and agency from the store on each request
            "agency": identity.agency, "roles": sorted(identity.roles), "clearance": identity.clearance,
        }
        return jwt.encode(payload, self.key, algorithm="EdDSA"), claims

    def verify(self, token: str) -> Claims:
        """The token's claims if it is ours, unaltered and current; TokenRejected otherwise."""
        try:
            payload = jwt.decode(token, self.public_key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER,
                                 options={"require": ["exp", "iat", "sub", "jti"]}, leeway=0)
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired: run `intelbus login` again") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature does not verify: not issued by this gateway") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejected("token is not signed with EdDSA: not issued by this gateway") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"token refused: {exc}") from None
        return Claims(name=payload["sub"], token_id=payload["jti"], expires_at=payload["exp"], issued_at=payload["iat"])


def unverified_issuer(token: str) -> str:
    """The `iss` a token claims (to pick its verifier); '' for something that is not a JWT."""
    try:
        return str(jwt.decode(token, options={"verify_signature": False}).get("iss", ""))
    except jwt.InvalidTokenError:
        return ""


def unverified_subject(token: str) -> str:
    """Whom a (possibly forged) token claims to be, for the audit row of its refusal."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
        return str(payload.get("preferred_username") or payload.get("sub") or "")[:64]
    except jwt.InvalidTokenError:
        return ""
