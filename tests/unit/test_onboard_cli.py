"""The onboarding commands without a lab: help, completion, NO_COLOR, offline host add/remove, errors.

``host add --offline --host-key`` pins a key without contacting the host (a
host about to be installed with a pre-generated key), which exercises the
whole inventory + sops path with the real sops binary and no sshd.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from helpers import ssh_to_age

from infratool.cli import main

CONSOLE_SCRIPT = Path(sys.executable).parent / "infratool"


def new_host_key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def run(tmp_path, monkeypatch):
    """``run(*args, input=None)`` → click Result, in ``tmp_path``, with a private operator key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "operator" / "keys.txt"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_COLOR", "1")
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def fleet_repo(run, tmp_path) -> Path:
    result = run("init", "fleet", "--os", "linux")
    assert result.exit_code == 0, result.output
    return tmp_path / "fleet"


# --- help, examples, completion ------------------------------------------------------------


@pytest.mark.parametrize("args", [["init"], ["host"], ["host", "add"], ["host", "remove"], ["completion"]])
def test_every_command_has_examples(run, args):
    result = run(*args, "--help")
    assert result.exit_code == 0
    assert "Examples:\n    infratool " in result.output


def test_commands_are_listed(run):
    out = run("--help").output
    for name in ("init", "host", "completion"):
        assert f"  {name} " in out


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="console script not installed")
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_clicks(shell, tmp_path):
    ours = subprocess.run([CONSOLE_SCRIPT, "completion", shell], capture_output=True, text=True, check=True)
    clicks = subprocess.run(
        [CONSOLE_SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "_INFRATOOL_COMPLETE": f"{shell}_source"},
    )
    assert ours.stdout.strip() == clicks.stdout.strip() != ""
    if shell == "bash":
        script = tmp_path / "c.bash"
        script.write_text(ours.stdout)
        assert subprocess.run(["bash", "-n", script]).returncode == 0


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="console script not installed")
def test_completion_completes_commands_and_host_names(fleet_repo, run):
    hosts = fleet_repo / "hosts.yaml"
    assert (
        run(
            "-i",
            hosts,
            "host",
            "add",
            "web1",
            "--address",
            "192.0.2.1",
            "--offline",
            "--host-key",
            new_host_key(),
        ).exit_code
        == 0
    )

    def complete(*words: str) -> list[str]:
        env = {
            **os.environ,
            "_INFRATOOL_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["infratool", *words]),
            "COMP_CWORD": str(len(words)),
        }
        out = subprocess.run([CONSOLE_SCRIPT], capture_output=True, text=True, env=env).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert {"host", "hosts"} <= set(complete("ho"))
    assert set(complete("host", "")) >= {"add", "remove"}
    assert complete("-i", str(hosts), "host", "remove", "w") == ["web1"]


def test_no_color_is_honoured_on_a_terminal(fleet_repo):
    def on_tty(extra_env: dict[str, str]) -> bytes:
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        env.update({"TERM": "xterm-256color", "HOME": str(fleet_repo.parent), **extra_env})
        env["SOPS_AGE_KEY_FILE"] = str(fleet_repo.parent / "operator" / "keys.txt")
        primary, secondary = pty.openpty()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infratool",
                "-i",
                fleet_repo / "hosts.yaml",
                "host",
                "add",
                f"h{len(extra_env)}",
                "--address",
                "192.0.2.9",
                "--offline",
                "--host-key",
                new_host_key(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=secondary,
            env=env,
        )
        os.close(secondary)
        out = b""
        while True:
            ready, _, _ = select.select([primary], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(primary)
        assert proc.wait(60) == 0, out
        return out

    # An SGR sequence with a colour parameter (30-37, 38;..., 90-97); bold alone is not colour.
    colour = re.compile(rb"\x1b\[(?:[0-9]+;)*(?:3[0-8]|9[0-7])[;m]")
    assert colour.search(on_tty({}))
    plain = on_tty({"NO_COLOR": "1"})
    assert not colour.search(plain) and b"pinned" in plain and b"h1" in plain


# --- init ------------------------------------------------------------------------------------


def test_init_writes_a_loadable_repo(fleet_repo, tmp_path):
    text = (fleet_repo / "hosts.yaml").read_text()
    assert "ssh_key: ~/.ssh/id_ed25519" in text and "os: linux" in text
    book = yaml.safe_load((fleet_repo / "playbooks" / "site.yaml").read_text())
    assert book["tasks"] == [{"include": "baseline.yaml"}]
    key = tmp_path / "operator" / "keys.txt"
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700


def test_init_refuses_if_any_file_exists(run, tmp_path):
    (tmp_path / "fleet" / "playbooks").mkdir(parents=True)
    (tmp_path / "fleet" / "playbooks" / "site.yaml").write_text("mine\n")
    result = run("init", "fleet")
    assert result.exit_code == 3 and "refusing to overwrite" in result.output
    assert sorted(p.name for p in (tmp_path / "fleet").rglob("*")) == ["playbooks", "site.yaml"]
    assert not (tmp_path / "operator").exists()  # not even the key


def test_init_reports_json(run, tmp_path):
    data = json.loads(run("--json", "init", "x").output)
    assert data["age_key_created"] is True and data["age_recipient"].startswith("age1")
    assert "AGE-SECRET-KEY" not in json.dumps(data)


# --- host add / remove without contacting the host ---------------------------------------------


def test_offline_add_recipients_match_libsodium(fleet_repo, run):
    hosts = fleet_repo / "hosts.yaml"
    for i in range(5):
        key = new_host_key()
        result = run(
            "--json",
            "-i",
            hosts,
            "host",
            "add",
            f"n{i}",
            "--address",
            f"192.0.2.{i + 1}",
            "--offline",
            "--host-key",
            key + " root@n{i}",
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["age_recipient"] == ssh_to_age(key)
        assert data["host_key"] == key  # the comment is not pinned
    rules = yaml.safe_load((fleet_repo / "secrets" / ".sops.yaml").read_text())["creation_rules"]
    assert len(rules) == 5 + 2


def test_add_errors(fleet_repo, run):
    hosts = fleet_repo / "hosts.yaml"
    key = new_host_key()
    cases = [
        (("bad name!",), 3, "invalid host name"),
        (("common",), 3, "names the secrets every host reads"),
        (("ok", "--offline"), 3, "--offline needs --host-key"),
        (("ok", "--offline", "--host-key", "ssh-rsa AAAAB3NzaC1yc2E"), 3, "ssh-ed25519"),
        (("ok", "--offline", "--host-key", key, "--fingerprint", "md5:xx"), 3, "SHA256"),
    ]
    for args, code, message in cases:
        result = run("-i", hosts, "host", "add", *args, "--address", "192.0.2.1")
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
    assert (
        run(
            "-i", hosts, "host", "add", "a", "--address", "192.0.2.1", "--offline", "--host-key", key
        ).exit_code
        == 0
    )
    clone = run("-i", hosts, "host", "add", "b", "--address", "192.0.2.2", "--offline", "--host-key", key)
    assert clone.exit_code == 4 and "already pinned for a" in clone.output
    missing = run("-i", fleet_repo / "nope.yaml", "host", "add", "c", "--address", "192.0.2.3")
    assert missing.exit_code == 3 and "infratool init" in missing.output
    bad_address = run(
        "-i", hosts, "host", "add", "d", "--address", "bad address", "--offline", "--host-key", new_host_key()
    )
    assert bad_address.exit_code == 3 and "invalid address" in bad_address.output
    assert list(yaml.safe_load(hosts.read_text())["hosts"]) == ["a"]


def test_add_is_idempotent_and_remove_asks(fleet_repo, run):
    hosts = fleet_repo / "hosts.yaml"
    key = new_host_key()
    args = ("-i", hosts, "host", "add", "a", "--address", "192.0.2.1", "--offline", "--host-key", key)
    assert run(*args).exit_code == 0
    snapshot = hosts.read_bytes(), (fleet_repo / "secrets" / ".sops.yaml").read_bytes()
    again = run(*args)
    assert again.exit_code == 0 and "already pinned" in again.output
    assert (hosts.read_bytes(), (fleet_repo / "secrets" / ".sops.yaml").read_bytes()) == snapshot

    declined = run("-i", hosts, "host", "remove", "a", input="n\n")
    assert declined.exit_code == 1 and "not removed" in declined.output
    assert hosts.read_bytes() == snapshot[0]
    removed = run("-i", hosts, "host", "remove", "a", input="y\n")
    assert removed.exit_code == 0, removed.output
    assert yaml.safe_load(hosts.read_text())["hosts"] is None
    assert run("-i", hosts, "host", "remove", "a", "--yes").exit_code == 3  # nothing left to remove


def test_a_half_done_add_is_finished_by_remove(fleet_repo, run):
    """A crash after .sops.yaml was written but before hosts.yaml: `host remove` still cleans up."""
    from infratool.onboard.sopsrules import edit_sops_config

    config = fleet_repo / "secrets" / ".sops.yaml"
    original = config.read_text()
    config.write_text(edit_sops_config(original, config, "ghost", ssh_to_age(new_host_key())))
    result = run("-i", fleet_repo / "hosts.yaml", "host", "remove", "ghost", "--yes")
    assert result.exit_code == 0, result.output
    assert "ghost" not in config.read_text()


def test_no_sops_config_pins_only(run, tmp_path):
    inv = tmp_path / "plain" / "hosts.yaml"
    inv.parent.mkdir()
    inv.write_text('hosts:\n  a: {address: 192.0.2.1, host_key: "ssh-ed25519 AAAA"}\n')
    result = run(
        "-i", inv, "host", "add", "b", "--address", "192.0.2.2", "--offline", "--host-key", new_host_key()
    )
    assert result.exit_code == 0 and "no secrets enrolment" in result.output
    assert not (tmp_path / "plain" / "secrets").exists()


def test_a_crash_before_hosts_yaml_is_finished_by_running_add_again(fleet_repo, run):
    """.sops.yaml rewritten and secrets re-encrypted, then a crash: the same `host add` completes it."""
    from infratool.onboard.sopsrules import apply_sops_config, edit_sops_config
    from infratool.secrets.secret import Secret
    from infratool.secrets.store import SopsStore

    store = SopsStore(fleet_repo / "secrets")
    store.write("web1.yaml", {"k": Secret("v")})
    key = new_host_key()
    apply_sops_config(
        store, edit_sops_config(store.config.read_text(), store.config, "web1", ssh_to_age(key))
    )
    config_after_crash = store.config.read_text()
    result = run(
        "-i",
        fleet_repo / "hosts.yaml",
        "host",
        "add",
        "web1",
        "--address",
        "192.0.2.1",
        "--offline",
        "--host-key",
        key,
    )
    assert result.exit_code == 0, result.output
    assert "re-encrypted" not in result.output  # that part was already done
    assert store.config.read_text() == config_after_crash
    assert yaml.safe_load((fleet_repo / "hosts.yaml").read_text())["hosts"]["web1"]["host_key"] == key


def test_replace_repins_and_keeps_the_other_settings(fleet_repo, run):
    hosts = fleet_repo / "hosts.yaml"
    old, new = new_host_key(), new_host_key()
    first = ("-i", hosts, "host", "add", "a", "--address", "192.0.2.1", "--tags", "db", "--port", "2222")
    assert run(*first, "--offline", "--host-key", old).exit_code == 0
    refused = run("-i", hosts, "host", "add", "a", "--address", "192.0.2.1", "--offline", "--host-key", new)
    assert refused.exit_code == 4 and "--replace" in refused.output
    result = run(
        "-i", hosts, "host", "add", "a", "--address", "192.0.2.5", "--replace", "--offline", "--host-key", new
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(hosts.read_text())["hosts"]["a"] == {
        "address": "192.0.2.5",
        "port": 2222,
        "tags": ["db"],
        "host_key": new,
    }
    config = (fleet_repo / "secrets" / ".sops.yaml").read_text()
    assert ssh_to_age(old) not in config and ssh_to_age(new) in config


def test_remove_warns_about_the_rotation_policy(fleet_repo, run):
    hosts = fleet_repo / "hosts.yaml"
    assert (
        run(
            "-i",
            hosts,
            "host",
            "add",
            "db1",
            "--address",
            "192.0.2.1",
            "--offline",
            "--host-key",
            new_host_key(),
        ).exit_code
        == 0
    )
    (fleet_repo / "secrets" / "rotation.yaml").write_text(
        "secrets:\n  pg/app:\n    file: secrets/db1.yaml\n    generator: password\n"
        "    consumers:\n      - host: db1\n        file: {path: /run/pg}\n"
    )
    result = run("-i", hosts, "host", "remove", "db1", "--yes")
    assert result.exit_code == 0, result.output
    assert "secrets/rotation.yaml still names db1 as a consumer of pg/app" in result.output


def test_a_stale_known_hosts_pin_is_not_left_trusted(run, tmp_path):
    inv = tmp_path / "kh" / "hosts.yaml"
    inv.parent.mkdir()
    (inv.parent / "known_hosts").write_text(f"192.0.2.1 {new_host_key()}\n")
    inv.write_text(
        'defaults: {known_hosts: known_hosts}\nhosts:\n  a: {address: 192.0.2.9, host_key: "ssh-ed25519 AAAA"}\n'
    )
    before = inv.read_text()
    result = run(
        "-i", inv, "host", "add", "b", "--address", "192.0.2.1", "--offline", "--host-key", new_host_key()
    )
    assert result.exit_code == 3, result.output
    assert "known_hosts" in result.output and "remove that entry first" in result.output
    assert inv.read_text() == before
