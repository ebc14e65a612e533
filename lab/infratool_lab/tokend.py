"""A tiny real service for the lab: HTTP that demands a bearer token read from a file.

It stands for any daemon that reads a secret file at start and rereads it on
SIGHUP (the common reload contract). Rotation delivers a new token file,
sends SIGHUP, and verifies with a real request carrying the new token; the
old token is then refused.

    python -m infratool_lab.tokend --token-file F --listen ADDR:PORT --pid-file P
"""

from __future__ import annotations

import argparse
import hmac
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _State:
    token = b""
    path: Path


def _load(state: _State) -> None:
    # A missing file refuses every request rather than failing the start: on a
    # NixOS host the unit can start before sops-nix ever installed the token.
    state.token = state.path.read_bytes().strip() if state.path.exists() else b""


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got = self.headers.get("Authorization", "").removeprefix("Bearer ").strip().encode()
            ok = bool(state.token) and hmac.compare_digest(got, state.token)
            self.send_response(200 if ok else 403)
            self.end_headers()
            self.wfile.write(b"ok\n" if ok else b"forbidden\n")

        def log_message(self, fmt: str, *args: object) -> None:
            # Never log requests: headers carry the token.
            return

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGTERM."""
    p = argparse.ArgumentParser(prog="tokend")
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--listen", required=True, help="ADDR:PORT")
    p.add_argument("--pid-file", type=Path, required=True)
    args = p.parse_args(argv)
    state = _State()
    state.path = args.token_file
    _load(state)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), _handler(state))
    signal.signal(signal.SIGHUP, lambda *_: _load(state))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    args.pid_file.write_text(f"{os.getpid()}\n")
    try:
        server.serve_forever()
    finally:
        args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
