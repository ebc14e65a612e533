"""Bad input is refused before any host is contacted (exit 3, file named); an unpinned host is refused (exit 4).

"Before any contact" is checked on the hosts themselves: their sshd logs
(LogLevel VERBOSE) must not have a single new line — no connection, no key
exchange, no login.
"""

from __future__ import annotations

import re

import yaml
from helpers import PLAYBOOKS, SshdLogs
from infratool_lab import services


def _rotate(cli, lab, *args):
    return cli("-i", lab.inventory_path, "secrets", "rotate", *args)


def test_malformed_known_hosts_exits_3_before_contact(lab, cli, tmp_path):
    known = tmp_path / "known_hosts"
    # A truncated entry (no key): OpenSSH would skip it silently; infratool refuses.
    known.write_text(lab.known_hosts_path.read_text() + "brix.example.org ssh-ed25519\n")
    inv = tmp_path / "hosts.yaml"
    data = yaml.safe_load(lab.inventory_path.read_text())
    data["defaults"]["known_hosts"] = str(known)
    inv.write_text(yaml.safe_dump(data))
    logs = SshdLogs(lab)
    r = cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    lineno = len(known.read_text().splitlines())
    assert f"{known}:{lineno}" in r.stderr, r.stderr
    logs.assert_no_contact()


def test_a_host_with_no_pinned_key_is_refused_exit_4_without_login(lab, cli, tmp_path):
    inv = tmp_path / "hosts.yaml"
    text = lab.inventory_path.read_text()
    # brix loses its pin (and the lab's known_hosts file is not referenced by the inventory).
    unpinned = re.sub(r'(  brix: \{[^\n]*?), host_key: "[^"]+"\}', r"\1}", text)
    assert unpinned != text and "known_hosts" not in unpinned
    inv.write_text(unpinned)
    logs = SshdLogs(lab)
    r = cli("-i", inv, "run", PLAYBOOKS / "baseline.yaml", "--yes")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "brix" in r.stdout + r.stderr and "pinned" in r.stdout + r.stderr
    assert "Accepted publickey" not in logs.since("brix")
    assert "Starting session" not in logs.since("brix")
    for other in ("snix", "slax", "nixtv-player"):  # the others converge
        assert lab.host(other).path("/var/lib/infratool/managed-by").exists(), other
    assert not lab.host("brix").path("/var/lib/infratool/managed-by").exists()


def test_malformed_sops_config_and_rotation_state_exit_3_before_contact(fleet, cli):
    lab = fleet
    services.provision(lab)
    assert _rotate(cli, lab, "--due", "--yes").returncode == 0
    secrets = lab.flake_dir / "secrets"
    cases = [
        (secrets / ".sops.yaml", "creation_rules: [\n  - {path_regex: x\n"),
        (secrets / ".rotation-state.yaml", "secrets:\n  postgres/app: {generation: many, rotated_at: [}\n"),
        (secrets / ".rotation-state.yaml", "secrets:\n  postgres/app:\n    generation: -3\n"),
    ]
    for path, text in cases:
        good = path.read_text()
        path.write_text(text)
        logs = SshdLogs(lab)
        cipher = (secrets / "lab.yaml").read_text()
        try:
            r = _rotate(cli, lab, "--all", "--yes")
            assert r.returncode == 3, (path.name, r.stdout + r.stderr)
            assert f"{path}:" in r.stderr, (path.name, r.stderr)
            logs.assert_no_contact()
            assert (secrets / "lab.yaml").read_text() == cipher
        finally:
            path.write_text(good)
