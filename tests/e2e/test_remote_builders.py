"""Remote builders on the lab: snix builds for slax, brix and nixtv-player over ssh-ng, for real.

Every assertion is about real state: the builder's authorized_keys and sshd
log, the clients' files, builds whose outputs land in the builder's own
/nix store, keys that stop working once revoked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from conftest import PLAYBOOKS, files_containing
from exectrace import both_ends
from helpers import SshdLogs, nix_eval, nix_parse, openssh_fingerprint
from replay import as_data

from infratool import inventory
from infratool import playbook as playbooks
from infratool.inventory import Host
from infratool.options import RunOptions
from infratool.rotation import state
from infratool.runner import Runner
from infratool.secrets.generators import public_from_private
from infratool.secrets.store import SopsStore
from infratool.tasks.remote_builders import filetext as render
from infratool.tasks.remote_builders.keys import new_key
from infratool.tasks.remote_builders.spec import Builder, Topology, pending_secret_key

PLAYBOOK = PLAYBOOKS / "remote-builders.yaml"
CLIENTS = ("slax", "brix", "nixtv-player")
KEY = "/etc/nix/remote-builders/id_ed25519"
PINNED = f"{KEY}.known_hosts"
USER = "nixremote"
ALIAS = "infratool-builder-snix"
AUTHORIZED = f"/var/lib/{USER}/.ssh/authorized_keys"
PING = "nix --extra-experimental-features nix-command store ping --store"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result`` after asserting it exited 0 (showing its output if not)."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def playbook(tmp_path: Path, name: str, **changes: object) -> Path:
    """A copy of the shipped playbook with some ``with:`` parameters changed."""
    data = yaml.safe_load(PLAYBOOK.read_text())
    data["tasks"][0]["with"].update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def check_playbook(tmp_path: Path) -> Path:
    """A playbook running only ``remote_builders.check``."""
    path = tmp_path / "check.yaml"
    path.write_text(
        "tasks:\n  - task: remote_builders.check\n"
        "    with: {builders: [snix], clients: [slax, brix, nixtv-player]}\n"
    )
    return path


def ping(lab, client: str, key: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``nix store ping`` from ``client`` to snix.

    Without ``key``: through the alias the playbook wrote in root's ssh_config
    (address, port, key, pinned host key). With ``key``: that key only, the
    ssh_config ignored, the host key still pinned from the client's file.
    """
    if key is None:
        return lab.exec(client, f"{PING} 'ssh-ng://{USER}@{ALIAS}'", input=b"", timeout=60)
    snix = lab.host("snix")
    opts = (
        f"-F /dev/null -p {snix.port} -o UserKnownHostsFile={PINNED} -o HostKeyAlias={ALIAS} -o BatchMode=yes"
    )
    uri = f"ssh-ng://{USER}@{snix.address}?ssh-key={key}"
    return lab.exec(client, f"NIX_SSHOPTS='{opts}' {PING} '{uri}'", input=b"", timeout=60)


def remote_build(lab, client: str) -> subprocess.CompletedProcess[bytes]:
    """A new derivation built with no local slots, through the client's own nix.conf and machines."""
    nonce = os.urandom(6).hex()
    expr = (
        f'derivation {{ name = "rb-test-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'args = [ "-c" "read h < /proc/sys/kernel/hostname; echo $h > $out" ]; }'
    )
    return lab.exec(client, ["nix-build", "--no-out-link", "--max-jobs", "0", "-E", expr], timeout=120)


def stored_keys(lab) -> dict[str, str]:
    """client → private key text, read from the lab repo's sops file (the test holds the age key)."""
    values = SopsStore(lab.flake_dir / "secrets").read("remote-builders.yaml")
    return {
        c: values[f"remote-builders/{c}/ssh_key"].reveal()
        for c in CLIENTS
        if f"remote-builders/{c}/ssh_key" in values
    }


def managed_keys(lab) -> dict[str, list[str]]:
    """The managed lines of snix's authorized_keys, by client."""
    return render.managed_lines(lab.host("snix").path(AUTHORIZED).read_text())


def test_setup_builds_on_the_builder_converges_and_leaks_nothing(fleet, cli, tmp_path, _private_audit_log):
    lab, inv = fleet, fleet.inventory_path
    snix = lab.host("snix")
    with both_ends(lab, cli, tmp_path / "execs") as seen:
        plan = seen.cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode")
        run = seen.cli("-i", inv, "-vv", "run", PLAYBOOK, "--yes")
        again = seen.cli("-i", inv, "--json", "plan", PLAYBOOK, "--detailed-exitcode")
    seen.assert_recorded(min_sessions=len(CLIENTS) + 1)
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "generate builder key of slax" in plan.stdout
    assert "(secret content: not shown)" in plan.stdout
    ok(run)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["changes"] == []

    keys = stored_keys(lab)
    assert sorted(keys) == sorted(CLIENTS)
    lines = managed_keys(lab)
    # Clients log in as the dedicated user, never root: root's authorized_keys is not ours.
    root_keys = snix.path("/root/.ssh/authorized_keys").read_text()
    assert Path(f"{lab.admin_key}.pub").read_text().split()[1] in root_keys
    assert render.managed_lines(root_keys) == {}
    assert f"trusted-users = root {USER}" in snix.path("/etc/nix/nix.conf").read_text()
    assert snix.path(AUTHORIZED).stat().st_mode & 0o777 == 0o600
    for client in CLIENTS:
        host = lab.host(client)
        key_file = host.path(KEY)
        assert key_file.read_text() == keys[client]
        assert key_file.stat().st_mode & 0o777 == 0o600
        public = render.key_blob(
            subprocess.run(
                ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True
            ).stdout
        )
        assert lines[client] == [
            f'restrict,command="nix-daemon --stdio" {public} infratool:remote-builders:{client}'
        ]
        machines = host.path("/etc/nix/machines").read_text()
        assert (
            f"ssh-ng://{USER}@{ALIAS} x86_64-linux {KEY} 8 2 nixos-test,benchmark,big-parallel - " in machines
        )
        conf = host.path("/etc/nix/nix.conf").read_text()
        assert "builders = @/etc/nix/machines" in conf and "builders-use-substitutes = true" in conf

        # The installed key logs in (host key pinned in root's known_hosts) ...
        assert b"Version:" in ok_bytes(ping(lab, client)).stderr
        # ... and a build with no local slots runs on snix and lands in snix's own store.
        log_before = snix.sshd_log.stat().st_size
        built = ok_bytes(remote_build(lab, client))
        out = built.stdout.decode().strip()
        assert f"on 'ssh-ng://{USER}@{ALIAS}'" in built.stderr.decode()
        assert snix.path(out).read_text() == "snix\n"
        assert host.path(out).read_text() == "snix\n"
        with open(snix.sshd_log, "rb") as log:
            log.seek(log_before)
            assert f"Accepted publickey for {USER} from 127.0.0.1 port".encode() in (session := log.read())
        assert f"ED25519 {openssh_fingerprint(public)}".encode() in session  # this client's key, this build

    # The client key opens no shell: sshd forces the daemon, whatever is asked. The
    # login itself must succeed (sshd's log says so), or this would pass on any failure.
    marker = f"/tmp/pwned-{os.urandom(4).hex()}"
    logs = SshdLogs(lab)
    shell = lab.exec("slax", f"ssh {ALIAS} 'echo SHELL-OK; touch {marker}'", input=b"", timeout=30)
    assert b"SHELL-OK" not in shell.stdout and not snix.path(marker).exists()
    attempt = logs.since("snix")
    slax_key = render.key_blob(
        subprocess.run(
            ["ssh-keygen", "-y", "-f", str(lab.host("slax").path(KEY))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert (
        f"ED25519 {openssh_fingerprint(slax_key)}" in attempt and f"Accepted publickey for {USER}" in attempt
    ), attempt
    assert "Starting session: forced-command (key-option) 'nix-daemon --stdio'" in attempt, attempt
    assert "Starting session: command" not in attempt and "Starting session: shell" not in attempt
    tty = lab.exec("slax", f"ssh -tt {ALIAS} true", input=b"", timeout=30)
    assert b"PTY allocation request failed" in tty.stderr

    # Canary: no private key text anywhere but the sops file (encrypted) and the 0600 key files.
    outputs = [r.stdout + r.stderr for r in (plan, run, again)]
    for client, private in keys.items():
        for needle in [line for line in private.splitlines() if len(line) > 20]:
            assert not any(needle in out for out in outputs), f"{client} key in CLI output"
            assert seen.hits(needle) == [], f"{client} key in a process's argv or environment"
            assert needle not in _private_audit_log.read_text()
            assert files_containing(tmp_path / "controller-tmp", needle) == []
            assert files_containing(lab.flake_dir, needle) == []
            for host in lab.hosts():
                assert files_containing(host.path("/tmp"), needle) == []
                assert needle not in host.sshd_log.read_text()
    for client in CLIENTS:
        assert not list(lab.host(client).path("/etc/nix/remote-builders").glob(".infratool.*"))


def ok_bytes(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    """``result`` of a lab exec after asserting it exited 0."""
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    return result


def test_the_key_a_plan_shows_is_the_key_installed_when_applied_from_data(fleet):
    """Issue 16 §3: the plan showed one key and the run stored another. Keys are made at plan time.

    The plan is applied as a saved plan is: rebuilt from its actions and
    parameters alone, by a fresh runner (nothing of the planning process kept).
    """
    lab = fleet
    inv = inventory.load(lab.inventory_path)
    with Runner(inv, playbooks.load(PLAYBOOK, inv), RunOptions()) as planner:
        planned = planner.plan()
    shown = {}
    for change in planned.changes:
        found = re.match(r"generate builder key of (\S+) \((ssh-ed25519 \S+)\)", change.description)
        if found:
            shown[found[1]] = found[2]
    assert sorted(shown) == sorted(CLIENTS)
    with Runner(inv, playbooks.load(PLAYBOOK, inv), RunOptions()) as applier:
        applier.gather()
        result = applier.apply(as_data(planned, ("remote_builders.setup",)))
    assert result.exit_code == 0, result.to_dict()
    stored = stored_keys(lab)
    for client in CLIENTS:
        assert render.key_blob(public_from_private(stored[client])) == shown[client]
        assert [render.line_key(line) for line in managed_keys(lab)[client]] == [shown[client]]
    for client in ("slax", "brix"):  # os: linux clients hold the key file itself
        installed = lab.host(client).path(KEY).read_text()
        assert render.key_blob(public_from_private(installed)) == shown[client]
        ok_bytes(ping(lab, client))


def test_rotation_revokes_old_keys_and_removed_clients_lose_theirs(fleet, cli, tmp_path):
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    for client in ("slax", "brix"):
        lab.exec(client, f"cp {KEY} /root/old-builder-key", check=True)
    old = stored_keys(lab)

    # slax: rotated by the playbook switch, because its key is older than max_age (90d).
    # brix: a rotation interrupted right after its new key was stored as pending:
    # the run resumes it with that key.
    with state.locked(state.state_path(lab.flake_dir / "secrets")) as records:
        records.get("builder-key/slax").last_rotated = state.utcnow() - timedelta(days=91)
        assert records.get("builder-key/brix").generation == 1  # recorded when first generated
    pending_brix = new_key("brix")
    SopsStore(lab.flake_dir / "secrets").write(
        "remote-builders.yaml", {pending_secret_key("brix"): pending_brix.private}
    )
    new_brix_public = pending_brix.public
    rotate = playbook(tmp_path, "rotate.yaml", rotate_keys=["slax"])
    plan = cli("-i", inv, "plan", rotate)
    assert "rotate builder key of slax" in plan.stdout
    assert "builder key of brix (" + render.key_blob(new_brix_public) in plan.stdout
    assert "revoke old builder key of brix, slax" in plan.stdout
    ok(cli("-i", inv, "run", rotate, "--yes"))
    # Left in the playbook, the switch rotates again only when the key is due again.
    assert cli("-i", inv, "plan", rotate, "--detailed-exitcode").returncode == 0
    records = state.load(state.state_path(lab.flake_dir / "secrets"))
    assert records.get("builder-key/slax").generation == 2 and records.get("builder-key/brix").generation == 2
    assert records.get("builder-key/nixtv-player").generation == 1

    new = stored_keys(lab)
    assert new["slax"] != old["slax"] and new["brix"] != old["brix"]
    assert new["nixtv-player"] == old["nixtv-player"]
    assert render.line_key(managed_keys(lab)["brix"][0]) == render.key_blob(new_brix_public)
    for client in ("slax", "brix"):
        assert lab.host(client).path(KEY).read_text() == new[client]
        refused = ping(lab, client, "/root/old-builder-key")
        assert refused.returncode != 0 and b"Permission denied (publickey)" in refused.stderr
        ok_bytes(ping(lab, client))
        assert len(managed_keys(lab)[client]) == 1
    # Rotation done: the shipped playbook plans nothing.
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0

    # nixtv-player leaves the playbook: its key is revoked on snix, other lines stay.
    nixtv_public = render.line_key(managed_keys(lab)["nixtv-player"][0])
    fewer = playbook(tmp_path, "fewer.yaml", clients=["slax", "brix"])
    plan = cli("-i", inv, "plan", fewer)
    assert "revoke key of removed client nixtv-player" in plan.stdout
    ok(cli("-i", inv, "run", fewer, "--yes"))
    authorized = lab.host("snix").path(AUTHORIZED).read_text()
    assert nixtv_public not in authorized and "infratool:remote-builders:nixtv-player" not in authorized
    assert sorted(managed_keys(lab)) == ["brix", "slax"]
    refused = ping(lab, "nixtv-player")
    assert refused.returncode != 0 and b"Permission denied (publickey)" in refused.stderr
    assert cli("-i", inv, "plan", fewer, "--detailed-exitcode").returncode == 0


def test_hand_edits_are_shown_and_restored_other_lines_kept(fleet, cli):
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    snix, slax = lab.host("snix"), lab.host("slax")
    machines = slax.path("/etc/nix/machines")
    mine = "ssh://nix@other.example x86_64-linux - 1 1 - - -\n"
    machines.write_text(machines.read_text().replace(f"{KEY} 8 2", f"{KEY} 1 2") + mine)
    authorized = snix.path(AUTHORIZED)
    text = authorized.read_text()
    theirs = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHandAddedKeyHandAddedKeyHandAddedKey0000 someone@else\n"
    authorized.write_text(text.replace('restrict,command="nix-daemon --stdio" ', "", 1) + theirs)

    # --limit brix: brix and the builder it needs are planned, slax is not looked at.
    limited = cli("-i", inv, "plan", PLAYBOOK, "--limit", "brix")
    assert "brix: no changes" in limited.stdout and "snix: 1 change(s)" in limited.stdout
    assert "slax:" not in limited.stdout  # no section: slax was not planned

    plan = cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode")
    assert plan.returncode == 2
    assert f"-ssh-ng://{USER}@{ALIAS} x86_64-linux {KEY} 1 2" in plan.stdout
    assert f"+ssh-ng://{USER}@{ALIAS} x86_64-linux {KEY} 8 2" in plan.stdout
    assert "slax: 1 change(s)" in plan.stdout and "brix: no changes" in plan.stdout
    assert "snix: 1 change(s)" in plan.stdout  # the unrestricted line is put back, restricted

    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    assert f"{KEY} 8 2" in machines.read_text() and mine in machines.read_text()
    restored = authorized.read_text()
    assert theirs in restored
    assert all(
        line.startswith('restrict,command="nix-daemon --stdio" ')
        for lines in managed_keys(lab).values()
        for line in lines
    )
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0


def test_check_task_and_a_changed_builder_host_key_is_refused(fleet, cli, tmp_path):
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes", "--forks", "4"))
    check = check_playbook(tmp_path)
    state = {"INFRATOOL_STATE_DIR": str(tmp_path / "state")}
    result = ok(cli("-i", inv, "--json", "run", check, "--yes", env=state))
    data = json.loads(result.stdout)
    checks = [c for c in data["plan"]["changes"] if c["action"] == "check"]
    assert {c["host"] for c in checks} == {"slax", "brix", "nixtv-player"}, checks
    assert all(c["description"] == "check: nix store ping and a --max-jobs 0 build on snix" for c in checks)
    # Counted as checks, never as changed; the result shows what was built where.
    for row in data["results"]:
        if row["host"] in ("slax", "brix"):
            assert row["status"] == "ok" and not row["applied"], row
            (proof,) = row["verified"]
            assert re.fullmatch(
                r"built /nix/store/[a-z0-9]{32}-infratool-rb-check-[0-9a-f]{12} on snix", proof
            )
    table = ok(cli("-i", inv, "plan", check, env=state))
    # Converged: nothing changed on the clients or the builder since the checks passed.
    assert "check:" not in table.stdout, table.stdout
    again = json.loads(ok(cli("-i", inv, "--json", "run", check, "--yes", env=state)).stdout)
    assert again["plan"]["changes"] == [], again["plan"]

    # The check is real: a builder whose daemon the login user cannot reach fails it
    # (nothing a plan could see, so the check runs again only without its record).
    snix = lab.host("snix")
    sockets = snix.path("/nix/var/nix/daemon-socket")
    sockets.chmod(0o700)
    fresh = {"INFRATOOL_STATE_DIR": str(tmp_path / "fresh-state")}
    result = cli("-i", inv, "run", check, "--yes", env=fresh)
    sockets.chmod(0o755)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"nix store ping ssh-ng://{USER}@{ALIAS}" in result.stderr
    assert "cannot open connection to remote store" in result.stderr
    ok(cli("-i", inv, "run", check, "--yes", env=fresh))

    lab.regenerate_host_key("snix")  # the inventory still pins the old key
    before = set(os.listdir(snix.path("/nix/store")))
    refused = ping(lab, "slax")
    assert refused.returncode != 0 and b"Host key verification failed" in refused.stderr
    # The build hook uses the machines line's pinned key: refused there too, no build on snix.
    built = remote_build(lab, "brix")
    assert built.returncode != 0
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in built.stderr
    assert {p for p in os.listdir(snix.path("/nix/store")) if "rb-test" in p} <= before

    result = cli("-i", inv, "run", check, "--yes")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "HOST KEY CHANGED" in result.stdout + result.stderr


def test_bad_input_exits_3_with_file_line_and_touches_nothing(lab, cli, tmp_path):
    logs = {h.name: h.sshd_log.read_text() for h in lab.hosts()}
    cases = {
        "clients: [slax, laptop9]": (7, "client 'laptop9' is not in the inventory"),
        "builders: [{host: snix, systems: [x86_64-windows]}]": (6, "unknown system 'x86_64-windows'"),
        "builders: [{host: snix, max_jobs: -1}]": (6, "max_jobs must be 0 or more"),
        "speed_factor: 0": (8, "speed_factor must be 1 or more"),
        "rotate_keys: [snix]": (8, "rotate_keys: 'snix' is not a client"),
        # Issue 22.1: a client's key never logs in as root on a builder.
        "ssh_user: root": (8, "builder clients must not log in as root"),
        "builders: [{host: snix, ssh_user: root}]": (6, "builder clients must not log in as root"),
    }
    for override, (line, message) in cases.items():
        body = {"builders": "builders: [snix]", "clients": "clients: [slax, brix]", "extra": ""}
        key = override.split(":")[0]
        body["extra" if key not in body else key] = override
        pb = tmp_path / "bad.yaml"
        pb.write_text(
            "name: bad\nhosts: all\ntasks:\n  - task: remote_builders.setup\n    with:\n"
            f"      {body['builders']}\n      {body['clients']}\n      {body['extra']}\n"
        )
        result = cli("-i", lab.inventory_path, "run", pb, "--yes")
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"{pb}:{line}:" in result.stderr and message in result.stderr, result.stderr
    for h in lab.hosts():
        assert h.sshd_log.read_text() == logs[h.name], f"{h.name} was contacted"
    assert not (lab.flake_dir / "secrets" / "remote-builders.yaml").exists()


def test_nixos_client_gets_a_module_that_parses_and_a_sops_secret(fleet, cli, tmp_path):
    data = yaml.safe_load(fleet.inventory_path.read_text())
    data["hosts"]["slax"]["os"] = "nixos"
    inv = tmp_path / "hosts.yaml"
    inv.write_text(yaml.safe_dump(data))
    plan = cli("-i", inv, "plan", PLAYBOOK)
    assert "create hosts/slax/generated/remote-builders.nix" in plan.stdout
    assert "deploy slax:" in plan.stdout
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes", "--no-deploy"))
    generated = fleet.flake_dir / "hosts/slax/generated/remote-builders.nix"
    nix_parse(generated)
    stub = '{ config = { sops.secrets."remote-builders/slax/ssh_key".path = "/run/secrets/k"; }; }'
    evaluated = nix_eval(f"let m = import {generated} {stub}; in {{ inherit (m) nix programs; }}")
    nix = evaluated["nix"]
    # The alias carries address and port; the pinned key is looked up under the alias.
    ssh = evaluated["programs"]["ssh"]
    assert (
        f"Host {ALIAS}\n" in ssh["extraConfig"] and f"Port {fleet.host('snix').port}\n" in ssh["extraConfig"]
    )
    assert "IdentityFile /run/secrets/remote-builders/slax/ssh_key\n" in ssh["extraConfig"]
    assert "StrictHostKeyChecking yes" in ssh["extraConfig"] and f"HostKeyAlias {ALIAS}" in ssh["extraConfig"]
    assert ssh["knownHosts"]["infratool-remote-builder-snix"]["hostNames"] == [ALIAS]
    snix = fleet.host("snix")
    assert nix["distributedBuilds"] is True and nix["settings"] == {"builders-use-substitutes": True}
    (machine,) = nix["buildMachines"]
    assert machine["hostName"] == ALIAS and machine["protocol"] == "ssh-ng"
    assert machine["sshUser"] == USER
    assert machine["sshKey"] == "/run/secrets/k" and machine["maxJobs"] == 8
    import base64

    assert base64.b64decode(machine["publicHostKey"]).decode() == snix.host_key_public
    # slax's key is in sops for sops-nix; nothing was written on slax imperatively.
    assert "slax" in stored_keys(fleet)
    assert not fleet.host("slax").path(KEY).exists()
    assert "builders" not in fleet.host("slax").path("/etc/nix/nix.conf").read_text()
    # snix authorizes it anyway (the deploy installs the key on slax).
    assert "slax" in managed_keys(fleet)


def test_nixos_builder_module_parses_and_keeps_root_trusted(tmp_path):
    host = Host(
        name="snix",
        address="snix.home.arpa",
        os="nixos",
        host_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINpqcOCGR1icrgIP0MxTjoTyLGo7/QBcGbKxQjmmEFGj",),
    )
    builder = Builder(host, ("x86_64-linux",), 4, 1, (), (), "nixremote")
    topo = Topology((builder,), (), "ssh-ng", "/k")
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuZeoPyplWLpQcNETESmevWHP4Y2cf3aokrWv0+igTd c"
    path = tmp_path / "builder.nix"
    path.write_text(render.builder_module(topo, builder, {"slax": public}))
    nix_parse(path)
    evaluated = nix_eval(f'(import {path} {{ config.nix.package.out = "/nix/store/x-nix"; }})')
    config = evaluated
    assert config["nix"]["settings"]["trusted-users"] == ["root", "nixremote"]
    user = config["users"]["users"]["nixremote"]
    assert user["isSystemUser"] is True and user["group"] == "nixremote" and user["useDefaultShell"] is True
    assert config["users"]["groups"]["nixremote"] == {}
    assert config["users"]["users"]["nixremote"]["openssh"]["authorizedKeys"]["keys"] == [
        'restrict,command="/nix/store/x-nix/bin/nix-daemon --stdio" ssh-ed25519 '
        "AAAAC3NzaC1lZDI1NTE5AAAAIBuZeoPyplWLpQcNETESmevWHP4Y2cf3aokrWv0+igTd infratool:remote-builders:slax"
    ]


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("", ["root", "nix"]),
        ("trusted-users = root @wheel\n", ["root", "@wheel", "nix"]),
        ("trusted-users = alice\nextra-trusted-users = nix\n", None),
    ],
)
def test_trusted_users_is_extended_not_replaced(text, wanted):
    assert render.trusted_users_needed(text, "nix") == wanted
