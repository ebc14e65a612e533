"""Drift (issue 15 §3): `secrets check` runs every consumer's verify with the current value.

Real PostgreSQL on brix and tokend on slax; the password is changed out of
band (as a person restoring a backup would) and the check must say so, name
the host, and notify a real HTTP receiver (ntfy-like), never with a value.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from infratool_lab import services

from infratool.secrets.store import SopsStore


class Receiver(BaseHTTPRequestHandler):
    """Keeps every POST (title, body), like an ntfy topic."""

    received: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.received.append((self.headers.get("Title", ""), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ntfy():
    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/fleet", Receiver.received
    server.shutdown()
    server.server_close()


def check(cli, lab, *args):
    return cli("-i", lab.inventory_path, *args, "secrets", "check")


def test_check_passes_then_names_the_drifted_host_and_notifies(fleet, cli, ntfy):
    lab = fleet
    services.provision(lab)
    url, received = ntfy
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    data = yaml.safe_load(policy.read_text())
    data["notify"] = {"url": url}  # default events include drift
    policy.write_text(yaml.safe_dump(data))
    rotated = cli("-i", lab.inventory_path, "secrets", "rotate", "--due", "--yes")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    store = SopsStore(lab.flake_dir / "secrets")
    current = {k: v.reveal() for k, v in store.read("lab.yaml").items()}
    sops_before = (lab.flake_dir / "secrets" / "lab.yaml").read_bytes()
    state_before = (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_bytes()

    ok = check(cli, lab)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no drift: 2 consumer(s) accept their current value" in ok.stderr
    assert received == []

    # Out of band: the database gets another password (a restored backup, a hand reset).
    lab.exec(
        "brix",
        "runuser -u postgres -- psql -h /run/postgresql -v ON_ERROR_STOP=1 -q -f -",
        input=b"ALTER ROLE app PASSWORD 'restored-from-backup';\n",
        check=True,
    )
    drifted = check(cli, lab, "--json")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    doc = json.loads(drifted.stdout)
    verdicts = {(f["secret"], f["host"]): f["status"] for f in doc["findings"]}
    assert doc["drift"] is True
    assert verdicts == {("postgres/app", "brix"): "rejected", ("tokend/token", "slax"): "ok"}
    assert "drift: postgres/app on brix: rejected" in drifted.stderr
    assert len(received) == 1
    title, body = received[0]
    assert title == "infratool drift" and "postgres/app on brix: rejected" in body
    assert "tokend/token" not in body

    # Nothing rotated, nothing written; no value in any output or notification.
    assert (lab.flake_dir / "secrets" / "lab.yaml").read_bytes() == sops_before
    assert (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_bytes() == state_before
    for value in current.values():
        assert value not in drifted.stdout + drifted.stderr + ok.stdout + ok.stderr + body

    # A rotation repairs it; the check agrees.
    assert cli("-i", lab.inventory_path, "secrets", "rotate", "postgres/app", "--yes").returncode == 0
    assert check(cli, lab).returncode == 0


def test_unreachable_consumer_host_is_not_a_pass(fleet, cli):
    lab = fleet
    services.provision(lab)
    assert cli("-i", lab.inventory_path, "secrets", "rotate", "--due", "--yes").returncode == 0
    lab.stop_host("slax")
    r = check(cli, lab)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "tokend/token on slax: unreachable" in r.stderr
