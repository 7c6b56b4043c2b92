"""Who is calling: a bearer token verified on every request, one code path for every issuer.

intelbus's own tokens (after a password login at /api/v1/login) are checked against the
gateway's key and then against the principal's current state (disabled, roles, agency);
tokens of the configured OIDC provider are checked against its JWKS and mapped to an
Identity by its claims (identity.oidc). Anything else is refused with a one-line reason.
"""
from __future__ import annotations

import threading
from pathlib import Path

from identity.principals import Identity
from identity.store import PrincipalStore
from identity.tokens import ISSUER, TokenIssuer, TokenRejected, unverified_issuer


class Authenticator:
    def __init__(self, store_path: Path, issuer: TokenIssuer, oidc=None):
        self.store_path = store_path
        self.issuer = issuer
        self.oidc = oidc  # identity.oidc.OidcVerifier, or None
        self._local = threading.local()

    @property
    def store(self) -> PrincipalStore:
        """One SQLite connection per thread (FastAPI runs plain handlers in a thread pool)."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = PrincipalStore(self.store_path)
        return store

    def identify(self, token: str | None) -> Identity:
        if not token:
            raise TokenRejected("not logged in: run `intelbus login` (or send Authorization: Bearer <token>)")
        iss = unverified_issuer(token)
        if iss == ISSUER:
            claims = self.issuer.verify(token)
            principal = self.store.find(claims.name)
            if principal is None:
                raise TokenRejected(f"token names {claims.name}, who is not a principal here (any more)")
            if principal.disabled:
                raise TokenRejected(f"account {principal.name} is disabled (ask an operator)")
            return principal.identity(token_id=claims.token_id)
        if self.oidc is not None and iss == self.oidc.config.issuer:
            try:
                return self.oidc.verify(token)
            except ValueError as exc:  # identity.oidc.TokenRejected
                raise TokenRejected(str(exc)) from None
        if not iss:
            raise TokenRejected("not a token this gateway can read (expected a JWT)")
        raise TokenRejected(f"token issuer {iss!r} is not trusted by this gateway")

    def login(self, name: str, password: str) -> tuple[str, float, Identity]:
        """A new token for a name and password (IdentityError if they are wrong or the account disabled)."""
        principal = self.store.authenticate(name, password)
        identity = principal.identity()
        token, claims = self.issuer.issue(identity)
        return token, claims.expires_at, principal.identity(token_id=claims.token_id)
