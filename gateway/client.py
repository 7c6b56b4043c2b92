"""The command line's side of the gateway: the saved login and an HTTP client that uses it.

`intelbus login` keeps the token in `~/.config/intelbus/credentials.json` (mode 0600; per
OS user; `INTELBUS_CREDENTIALS` names another file), or `INTELBUS_TOKEN` gives one for
automation. Data commands send it as a bearer token; the gateway decides. Errors come back
as one line (the server's `detail`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from schemas.times import cst


class ClientError(RuntimeError):
    """A request that did not succeed; str() is the one line to show."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


def credentials_path() -> Path:
    explicit = os.environ.get("INTELBUS_CREDENTIALS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "intelbus" / "credentials.json"


@dataclass(frozen=True)
class SavedLogin:
    gateway: str
    token: str
    name: str
    expires_at: float


def save_login(login: SavedLogin, path: Path | None = None) -> Path:
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(login.__dict__, f)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def load_login(path: Path | None = None) -> SavedLogin | None:
    path = path or credentials_path()
    try:
        return SavedLogin(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def forget_login(path: Path | None = None) -> bool:
    path = path or credentials_path()
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def current_token(gateway_url: str) -> str:
    """The token to send, or ClientError saying how to get one (no request is made without one)."""
    env = os.environ.get("INTELBUS_TOKEN")
    if env:
        return env.strip()
    saved = load_login()
    if saved is None:
        raise ClientError("not logged in: run `intelbus login`")
    if saved.gateway.rstrip("/") != gateway_url.rstrip("/"):
        raise ClientError(f"logged in at {saved.gateway}, not {gateway_url}: run `intelbus login`")
    if saved.expires_at <= time.time():
        raise ClientError(f"token of {saved.name} expired at {cst(saved.expires_at)}: run `intelbus login` again")
    return saved.token


class GatewayClient:
    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method: str, path: str, **kw) -> dict | list:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ClientError(f"the gateway at {self.base_url} is not reachable: is the stack up (`intelbus status`)?") from None
        except httpx.TimeoutException:
            raise ClientError(f"the gateway at {self.base_url} did not answer in time") from None
        if resp.status_code >= 400:
            raise ClientError(_detail(resp), resp.status_code)
        return resp.json()

    def get(self, path: str, **params):
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict):
        return self._call("POST", path, json=body)

    def ingest(self, kind: str, body: bytes, content_type: str = "application/x-ndjson", **params) -> dict:
        """POST /api/v1/events/{kind}: records (NDJSON, one JSON object, or CSV with its header) onto the bus."""
        return self._call("POST", f"/api/v1/events/{kind}", content=body, headers={"Content-Type": content_type},
                          params={k: v for k, v in params.items() if v is not None})

    def stream_lines(self, path: str, **params):
        """Lines of an NDJSON stream (the feed), as they arrive."""
        try:
            with self.http.stream("GET", path, params={k: v for k, v in params.items() if v is not None},
                                  timeout=httpx.Timeout(30.0, read=None)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ClientError(_detail(resp), resp.status_code)
                for line in resp.iter_lines():
                    if line:
                        yield line
        except httpx.ConnectError:
            raise ClientError(f"the gateway at {self.base_url} is not reachable: is the stack up (`intelbus status`)?") from None


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):  # FastAPI's validation errors: field and message
        detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    return str(detail or f"HTTP {resp.status_code}")
