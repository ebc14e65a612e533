"""``infratool hosts --check`` against hosts that are not what the inventory says (issue 13.17).

A refused host key exits 4, as ``plan``/``run`` do; a port that accepts and
then hangs up is one line, not a paramiko traceback; ``--timeout`` bounds the
connection too, not only the commands.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from infratool_lab import files

ANY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


class FakePort:
    """A TCP listener on loopback that accepts, then either hangs up at once or says nothing."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.hang:
                self.held.append(conn)  # keep it open and silent
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def fake_port(request: pytest.FixtureRequest) -> Iterator[FakePort]:
    port = FakePort(hang=request.param == "hang")
    yield port
    port.close()


def inventory(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "hosts.yaml"
    key = tmp_path / "id_ed25519"
    key.write_bytes(files.generate_ed25519("test")[0])
    key.chmod(0o600)
    path.write_text(
        f"defaults: {{user: root, ssh_key: {key}}}\n"
        "hosts:\n"
        f"  odd: {{address: 127.0.0.1, port: {port}, host_key: {json.dumps(ANY_KEY)}}}\n"
    )
    return path


@pytest.mark.parametrize("fake_port", ["close"], indirect=True)
def test_a_port_that_hangs_up_is_one_line_not_a_traceback(fake_port, cli, tmp_path):
    result = cli("-i", inventory(tmp_path, fake_port.port), "hosts", "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "paramiko" not in result.stderr
    listing = cli("-i", inventory(tmp_path, fake_port.port), "--json", "hosts", "--check")
    (row,) = json.loads(listing.stdout)["hosts"]
    assert row["reachable"] is False
    assert row["error"] and "\n" not in row["error"]
    assert f"127.0.0.1:{fake_port.port}" in row["error"]
    assert "Traceback" not in listing.stderr


@pytest.mark.parametrize("fake_port", ["hang"], indirect=True)
def test_timeout_covers_the_connection(fake_port, cli, tmp_path):
    # What start-up and a failed connection cost on this (possibly busy) machine:
    # a port nobody listens on fails at once.
    with socket.create_server(("127.0.0.1", 0)) as closed:
        free = closed.getsockname()[1]
    started = time.monotonic()
    assert cli("-i", inventory(tmp_path, free), "hosts", "--check").returncode == 1
    baseline = time.monotonic() - started

    inv = inventory(tmp_path, fake_port.port)
    started = time.monotonic()
    result = cli("-i", inv, "hosts", "--check", "--timeout", "1")
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    # Before the fix the silent port always took the 10 s connect timeout.
    assert took < baseline + 4, f"hosts --check --timeout 1 took {took:.1f}s (baseline {baseline:.1f}s)"
    assert "timed out" in result.stdout or "banner" in result.stdout.lower()
    assert "Traceback" not in result.stderr


def test_a_changed_or_unpinned_key_exits_4_like_plan_and_run(lab, cli):
    inv = lab.inventory_path
    assert cli("-i", inv, "hosts", "--check").returncode == 0
    lab.regenerate_host_key("brix")
    changed = cli("-i", inv, "--json", "hosts", "--check")
    assert changed.returncode == 4, changed.stdout + changed.stderr
    rows = {r["name"]: r for r in json.loads(changed.stdout)["hosts"]}
    assert rows["brix"]["reachable"] is False and "HOST KEY CHANGED" in rows["brix"]["error"]
    assert all(rows[n]["reachable"] is True for n in ("snix", "slax", "nixtv-player"))
    # A host key refusal wins over an ordinary failure, as in plan/run.
    lab.stop_host("slax")
    assert cli("-i", inv, "hosts", "--check").returncode == 4
    # An unpinned host is refused the same way.
    text = inv.read_text().splitlines()
    unpinned = [line.split(", host_key:")[0] + "}" if line.startswith("  snix:") else line for line in text]
    inv.write_text("\n".join(unpinned) + "\n")
    only = cli("-i", inv, "hosts", "--check", "--limit", "snix")
    assert only.returncode == 4, only.stdout + only.stderr
