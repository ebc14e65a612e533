"""A small HTTP server speaking the part of Vault's API that ``generator: vault`` uses.

No Vault server can be installed on the test machines, so this process stands
in for one. It implements, with the methods, status codes and JSON shapes of
Vault's API documentation:

- ``GET /v1/<mount>/creds/<role>`` (database secrets engine, "Generate
  Credentials"): 200 ``{"request_id", "lease_id": "<mount>/creds/<role>/<id>",
  "renewable": true, "lease_duration": <ttl>, "data": {"username",
  "password"}, "wrap_info": null, "warnings": null, "auth": null}``;
- ``PUT|POST /v1/sys/leases/lookup`` ``{"lease_id"}``: 200 ``{"data": {"id",
  "issue_time", "expire_time", "last_renewal_time", "renewable", "ttl"}}``,
  or 400 ``{"errors": ["invalid lease"]}``;
- ``PUT|POST /v1/sys/leases/revoke`` ``{"lease_id"}``: 204 (also for a lease
  that does not exist, as Vault does);
- ``LIST /v1/sys/leases/lookup/<prefix>``: 200 ``{"data": {"keys": [...]}}``
  (lease ids under the prefix, without it), 404 when there are none;
- a missing or wrong ``X-Vault-Token``: 403 ``{"errors": ["permission denied"]}``;
  an unknown path: 404 ``{"errors": []}``.

And one endpoint that is not Vault's, standing in for the database behind the
secrets engine: ``GET /db/login`` with HTTP basic auth succeeds (200) only
for the username and password of a live lease, else 401. Lab hosts verify
delivered credentials with it.

Run: ``python tests/vaultserver.py [--ttl 3600]`` with the token on stdin
(a token in argv would be a leak the canary sweep catches); it prints
``port <n>`` on stdout once it listens on 127.0.0.1. Tests use :func:`serve`.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Vault:
    """The server's state: the leases it issued, live or revoked."""

    def __init__(self, token: str, ttl: int) -> None:
        self.token = token
        self.ttl = ttl
        self.leases: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def issue(self, mount: str, role: str) -> dict[str, Any]:
        lease_id = f"{mount}/creds/{role}/{uuid.uuid4()}"
        creds = {"username": f"v-{role}-{secrets.token_hex(4)}", "password": secrets.token_urlsafe(24)}
        with self.lock:
            self.leases[lease_id] = {"issued": time.time(), "revoked": False, **creds}
        return {
            "request_id": str(uuid.uuid4()),
            "lease_id": lease_id,
            "renewable": True,
            "lease_duration": self.ttl,
            "data": creds,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }

    def live(self, lease_id: str) -> dict[str, Any] | None:
        with self.lock:
            lease = self.leases.get(lease_id)
            if lease is None or lease["revoked"] or time.time() > lease["issued"] + self.ttl:
                return None
            return lease

    def revoke(self, lease_id: str) -> None:
        with self.lock:
            if lease_id in self.leases:
                self.leases[lease_id]["revoked"] = True

    def login(self, username: str, password: str) -> bool:
        with self.lock:
            ids = [
                i
                for i, le in self.leases.items()
                if le["username"] == username and le["password"] == password
            ]
        return any(self.live(i) for i in ids)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def handler(vault: Vault) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``vault``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read stdout for the port only

        def _send(self, status: int, body: dict[str, Any] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("X-Vault-Token") != vault.token:
                self._send(403, {"errors": ["permission denied"]})
                return False
            return True

        def _json(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return {}
            return body if isinstance(body, dict) else {}

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/db/login":
                return self._login()
            if not self._authorised():
                return None
            parts = path.strip("/").split("/")
            if len(parts) == 4 and parts[0] == "v1" and parts[2] == "creds" and parts[3]:
                return self._send(200, vault.issue(parts[1], parts[3]))
            return self._send(404, {"errors": []})

        def do_PUT(self) -> None:
            if not self._authorised():
                return None
            path = self.path.split("?", 1)[0]
            body = self._json()
            lease_id = body.get("lease_id")
            if path == "/v1/sys/leases/revoke":
                if not isinstance(lease_id, str) or not lease_id:
                    return self._send(400, {"errors": ["missing lease ID"]})
                vault.revoke(lease_id)
                return self._send(204)
            if path == "/v1/sys/leases/lookup":
                lease = vault.live(lease_id) if isinstance(lease_id, str) else None
                if lease is None:
                    return self._send(400, {"errors": ["invalid lease"]})
                left = int(lease["issued"] + vault.ttl - time.time())
                return self._send(
                    200,
                    {
                        "data": {
                            "id": lease_id,
                            "issue_time": _iso(lease["issued"]),
                            "expire_time": _iso(lease["issued"] + vault.ttl),
                            "last_renewal_time": None,
                            "renewable": True,
                            "ttl": left,
                        }
                    },
                )
            return self._send(404, {"errors": []})

        do_POST = do_PUT

        def do_LIST(self) -> None:
            if not self._authorised():
                return None
            path = self.path.split("?", 1)[0]
            prefix = path.removeprefix("/v1/sys/leases/lookup/")
            if prefix == path:
                return self._send(404, {"errors": []})
            with vault.lock:
                keys = [i.removeprefix(prefix) for i in vault.leases if i.startswith(prefix)]
            if not keys:
                return self._send(404, {"errors": []})
            return self._send(200, {"data": {"keys": sorted(keys)}})

        def _login(self) -> None:
            auth = self.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
            except ValueError:
                user, password = "", ""
            self._send(200 if vault.login(user, password) else 401, {})

    return Handler


@dataclass
class Running:
    """A running test server: its address and token, and an HTTP client for the tests' checks."""

    addr: str
    token: str
    proc: subprocess.Popen[bytes]

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """``(status, parsed JSON or None)`` of a request with the token."""
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.addr + path, data=data, method=method, headers={"X-Vault-Token": self.token}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def lease_valid(self, lease_id: str) -> bool:
        """Whether Vault's lease lookup knows ``lease_id`` as live."""
        status, _ = self.request("PUT", "/v1/sys/leases/lookup", {"lease_id": lease_id})
        return status == 200


@contextmanager
def serve(ttl: int = 3600) -> Iterator[Running]:
    """Start the server as a separate process; stop it after."""
    token = "hvs." + secrets.token_urlsafe(24)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--ttl", str(ttl)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(token.encode() + b"\n")
    proc.stdin.close()
    line = proc.stdout.readline().decode()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError("the Vault test server did not start")
    try:
        yield Running(f"http://127.0.0.1:{int(line.split()[1])}", token, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Serve until killed; the token comes on stdin."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    token = sys.stdin.readline().strip()
    if not token:
        parser.error("no token on stdin")
    server = ThreadingHTTPServer((args.host, 0), handler(Vault(token, args.ttl)))
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
