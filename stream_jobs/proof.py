"""The dedupe stage's check of each record's proof of publisher (schemas/proof.py), with a keyring
that follows the key store: a key created, rotated or revoked with `intelbus keys` takes effect in
a running worker within a second, without a restart."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from schemas.proof import Keyring, Refusal, verify

log = logging.getLogger("intelbus.jobs.proof")


class KeyringSource:
    """The current keyring of a key store file, read again when the file changes (looked at once a second)."""

    def __init__(self, path: Path, *, check_every_s: float = 1.0, clock=time.monotonic):
        self.path = Path(path)
        self.check_every_s = check_every_s
        self.clock = clock
        self._ring = Keyring()
        self._stamp = None
        self._checked = float("-inf")

    def current(self) -> Keyring:
        now = self.clock()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._ring = self._load() if stamp is not None else Keyring()
                self._stamp = stamp
                log.info("keyring: %d keys from %s", len(self._ring), self.path)
        return self._ring

    def _load(self) -> Keyring:
        from identity.keys import KeyStore

        with KeyStore(self.path, read_only=True) as store:  # a read-only mount serves
            return store.keyring()


def make_verifier(source: KeyringSource, is_within):
    """(value, headers, source_region) -> None if the proof holds, else (code, reason): the DedupeStage hook."""
    def check(value: bytes, headers, source_region: str):
        outcome = verify(value, headers, source.current(), source_region, is_within)
        if isinstance(outcome, Refusal):
            return outcome.code, outcome.reason
        return None
    return check
