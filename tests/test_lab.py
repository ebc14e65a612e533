"""The lab against real sshd, real paramiko with pinned keys, real nix and /proc."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
import yaml
from helpers import openssh_fingerprint
from infratool_lab import FLEET, AddressInUseError, Lab, LabError, LabHost, LabUnavailable, fleet, layout
from infratool_lab.files import TOKEN_PATH

from infratool.errors import CommandFailed, InputError


def pinned_client(lab: Lab, name: str, host_key: str | None = None) -> paramiko.SSHClient:
    """Connect as root with the lab admin key, accepting only the pinned host key."""
    entry = yaml.safe_load(lab.inventory_path.read_text())["hosts"][name]
    key_type, key_b64 = (host_key or entry["host_key"]).split()[:2]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(
        entry["address"], key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
    )
    try:
        client.connect(
            entry["address"],
            port=22,
            username="root",
            key_filename=str(lab.admin_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
    except BaseException:
        client.close()
        raise
    return client


def ssh(lab: Lab, name: str, command: str) -> tuple[int, str]:
    """Run ``command`` on a lab host over a pinned SSH connection; (exit status, stdout)."""
    with pinned_client(lab, name) as client:
        _, stdout, _ = client.exec_command(command, timeout=30)
        out = stdout.read().decode()
        return stdout.channel.recv_exit_status(), out


def lab_processes(lab: Lab) -> list[int]:
    """Every live process on the machine that sees one of the lab's host tokens.

    Written independently of ``infratool_lab.procs`` so it checks that code.
    """
    tokens = {p.read_text().strip() for p in lab.root.glob(f"*{TOKEN_PATH}")}
    assert tokens, "the lab has no host trees"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            seen = Path(f"/proc/{entry}/root{TOKEN_PATH}").read_text().strip()
        except OSError:
            continue
        if seen in tokens and alive(int(entry)):
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- no lab needed -------------------------------------------------------------


def test_host_path_maps_private_dirs_only() -> None:
    host = LabHost("snix", "127.0.0.10", Path("/lab/snix"))
    assert host.path("/etc/nix/nix.conf") == Path("/lab/snix/etc/nix/nix.conf")
    assert host.path("/nix") == Path("/lab/snix/nix")
    assert host.path("/usr/local/sbin/sbctl") == Path("/lab/snix/usr/local/sbin/sbctl")
    for shared in ("/etc/passwd", "/tmp/../etc/passwd", "/nixos", "relative"):
        with pytest.raises(ValueError):
            host.path(shared)


def test_bad_subnet_and_count_are_input_errors(tmp_path: Path) -> None:
    for subnet in ("10.0.0", "127.0", "127.0.300", "127.a.1"):
        with pytest.raises(InputError, match="subnet"):
            Lab(tmp_path, subnet=subnet)
    for count in (0, layout.MAX_HOSTS + 1):
        with pytest.raises(InputError, match="hosts"):
            Lab(tmp_path, subnet="127.1.1").up(count)
    assert not (tmp_path / "hosts.yaml").exists()


def test_a_lab_never_started_has_no_hosts_and_down_creates_nothing(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "nothing-here")
    assert lab.hosts() == []
    assert lab.status() == []
    lab.down()
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(LabError, match="no lab host named 'snix'"):
        lab.host("snix")


def test_missing_sshd_is_reported_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "SSHD", str(tmp_path / "no-sshd"))
    with pytest.raises(LabUnavailable, match="openssh-server"):
        Lab(tmp_path / "lab", subnet="127.1.1").up()


# -- a running lab -------------------------------------------------------------


def test_inventory_pins_every_host(lab: Lab) -> None:
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    assert inventory["defaults"] == {
        "user": "root",
        "port": 22,
        "ssh_key": str(lab.admin_key),
        "flake": str(lab.flake_dir),
    }
    assert lab.flake_dir.is_dir()
    assert lab.admin_key.stat().st_mode & 0o777 == 0o600
    assert list(inventory["hosts"]) == list(FLEET)
    addresses = set()
    for host in lab.hosts():
        entry = inventory["hosts"][host.name]
        assert entry["tags"] == FLEET[host.name]
        assert entry["address"] == host.address
        assert entry["os"] == "linux"
        assert entry["host_key"] == host.host_key_public
        assert entry["host_key"].startswith("ssh-ed25519 AAAA")
        addresses.add(host.address)
    assert len(addresses) == 4
    assert len({h.host_key_public for h in lab.hosts()}) == 4


def test_every_host_answers_and_sees_its_own_files(lab: Lab) -> None:
    for host in lab.hosts():
        with host.path("/etc/nix/nix.conf").open("a") as conf:
            conf.write(f"# lab host {host.name}\n")
    for host in lab.hosts():
        status, out = ssh(lab, host.name, "hostname; cat /etc/nix/nix.conf")
        assert status == 0
        lines = out.splitlines()
        assert lines[0] == host.name
        assert f"# lab host {host.name}" in lines
        assert [line for line in lines if line.startswith("# lab host")] == [f"# lab host {host.name}"]
        for setting in ("sandbox = false", "substituters =", "build-users-group ="):
            assert setting in lines


def test_tmp_is_private_to_each_host(lab: Lab) -> None:
    name = f"lab-private-{uuid.uuid4().hex}"
    assert ssh(lab, "snix", f"echo hello > /tmp/{name}")[0] == 0
    assert ssh(lab, "slax", f"test -e /tmp/{name}")[0] == 1
    assert lab.host("snix").path(f"/tmp/{name}").read_text() == "hello\n"
    assert not lab.host("slax").path(f"/tmp/{name}").exists()
    assert not Path("/tmp", name).exists()


def test_sshd_log_shows_the_admin_key_and_the_session(lab: Lab) -> None:
    admin = Path(f"{lab.admin_key}.pub").read_text()
    assert ssh(lab, "brix", "true")[0] == 0
    log = lab.host("brix").sshd_log.read_text()
    assert "Accepted publickey for root from " in log
    assert f"ED25519 {openssh_fingerprint(admin)}" in log
    assert "Starting session: command for root" in log
    # The other hosts saw no login at all.
    assert "Accepted publickey" not in lab.host("slax").sshd_log.read_text()


def test_nix_runs_on_a_private_store(lab: Lab) -> None:
    status, out = ssh(lab, "snix", "nix-store --version && nix-instantiate --eval -E 1+1")
    assert status == 0, out
    assert out.splitlines()[-1] == "2"
    assert lab.host("snix").path("/nix/var/nix/db").is_dir()
    assert not lab.host("slax").path("/nix/var/nix/db").exists()


def test_a_tool_in_usr_local_sbin_exists_on_one_host_only(lab: Lab) -> None:
    tool = lab.host("snix").path("/usr/local/sbin/lab-tool")
    tool.write_text("#!/bin/sh\necho tool on $(hostname)\n")
    tool.chmod(0o755)
    assert ssh(lab, "snix", "lab-tool") == (0, "tool on snix\n")
    assert ssh(lab, "slax", "command -v lab-tool")[0] != 0


def test_exec_runs_inside_the_host(lab: Lab) -> None:
    result = lab.exec("brix", "hostname; pwd; cat > /var/lib/from-exec", input=b"data")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["brix", "/root"]
    assert lab.host("brix").path("/var/lib/from-exec").read_bytes() == b"data"
    assert lab.exec("slax", ["test", "-e", "/var/lib/from-exec"]).returncode == 1
    with pytest.raises(CommandFailed) as failed:
        lab.exec("brix", "echo nope >&2; exit 7", check=True)
    assert failed.value.exited == 7
    assert "nope" in str(failed.value)


def test_regenerated_host_key_is_refused_by_a_pinned_client(lab: Lab) -> None:
    host = lab.host("slax")
    old_key = host.host_key_public
    service = int(lab.exec("slax", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!").stdout)
    sshd_pid = lab.status()[1].pid
    offset = host.sshd_log.stat().st_size

    new_key = lab.regenerate_host_key("slax")

    assert new_key != old_key
    assert new_key == host.host_key_public
    assert yaml.safe_load(lab.inventory_path.read_text())["hosts"]["slax"]["host_key"] == old_key
    with pytest.raises(paramiko.BadHostKeyException):
        pinned_client(lab, "slax")
    with host.sshd_log.open() as log:
        log.seek(offset)
        assert "Accepted publickey" not in log.read()
    # Same sshd (SIGHUP re-exec), services inside untouched, the new key works.
    assert lab.status()[1].pid == sshd_pid
    assert alive(service)
    with pinned_client(lab, "slax", host_key=new_key) as client:
        assert client.get_transport() is not None


def test_stopped_host_is_unreachable_until_started(lab: Lab) -> None:
    lab.stop_host("brix")
    with pytest.raises((paramiko.ssh_exception.NoValidConnectionsError, OSError)):
        pinned_client(lab, "brix")
    running = {row.name: row.running for row in lab.status()}
    assert running == {"snix": True, "slax": True, "brix": False, "nixtv-player": True}
    assert ssh(lab, "snix", "true")[0] == 0

    with pytest.raises(LabError, match="brix is not running"):
        lab.exec("brix", "true")

    lab.start_host("brix")
    assert ssh(lab, "brix", "hostname") == (0, "brix\n")


def test_up_is_idempotent_and_restarts_a_dead_host(lab: Lab) -> None:
    before = {row.name: row.pid for row in lab.status()}
    keys = lab.inventory_path.read_text()
    lab.up()
    assert {row.name: row.pid for row in lab.status()} == before
    assert lab.inventory_path.read_text() == keys

    os.kill(before["slax"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while lab.status()[1].running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not lab.status()[1].running

    lab.up()
    after = {row.name: row.pid for row in lab.status()}
    assert after["slax"] not in (None, before["slax"])
    assert {k: v for k, v in after.items() if k != "slax"} == {k: v for k, v in before.items() if k != "slax"}
    assert ssh(lab, "slax", "hostname") == (0, "slax\n")
    assert lab.inventory_path.read_text() == keys


def test_smaller_up_stops_the_extra_hosts(lab_factory: Callable[[int], Lab]) -> None:
    lab = lab_factory(6)
    extra = [lab.host("lab05"), lab.host("lab06")]
    lab.up(4)
    assert [h.name for h in lab.hosts()] == list(FLEET)
    assert list(yaml.safe_load(lab.inventory_path.read_text())["hosts"]) == list(FLEET)
    for host in extra:
        with socket.socket() as probe:
            assert probe.connect_ex((host.address, 22)) != 0


def test_down_ends_services_inside_hosts_and_nothing_outside(lab: Lab) -> None:
    outside = subprocess.Popen(["sleep", "300"])
    try:
        over_ssh = ssh(lab, "snix", "setsid sleep 301 </dev/null >/dev/null 2>&1 & echo $!")[1]
        by_exec = lab.exec("nixtv-player", "setsid sleep 302 </dev/null >/dev/null 2>&1 & echo $!").stdout
        services = [int(over_ssh), int(by_exec)]
        assert all(alive(pid) for pid in services)
        assert len(lab_processes(lab)) >= 6  # four sshd + two services

        lab.down()

        assert lab_processes(lab) == []
        assert not any(alive(pid) for pid in services)
        assert [row.running for row in lab.status()] == [False] * 4
        assert outside.poll() is None, "down() killed a process outside the lab"
    finally:
        outside.kill()
        outside.wait()


def test_two_labs_do_not_touch_each_other(lab: Lab, lab_factory: Callable[[int], Lab]) -> None:
    other = lab_factory(2)
    assert {h.address for h in other.hosts()}.isdisjoint(h.address for h in lab.hosts())
    other.down()
    assert all(row.running for row in lab.status())
    assert ssh(lab, "snix", "hostname") == (0, "snix\n")


def test_taken_address_is_reported_before_anything_starts(tmp_path: Path, lab_subnet: str) -> None:
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind((f"{lab_subnet}.11", 22))
    except OSError:
        squatter.close()
        pytest.skip(f"{lab_subnet}.11:22 is busy already")
    squatter.listen()
    lab = Lab(tmp_path / "lab", subnet=lab_subnet)
    try:
        with pytest.raises(AddressInUseError, match=rf"{lab_subnet}\.11:22"):
            lab.up()
        assert not any(row.running for row in lab.status())
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    finally:
        squatter.close()
        lab.down()


def test_a_32_host_lab_comes_up_and_every_host_answers(lab_factory: Callable[[int], Lab]) -> None:
    # How fast is measured by bench/run.py ("lab up: N hosts in S s"), not bounded here:
    # a time limit on a shared 2-core machine flakes.
    lab = lab_factory(32)
    hosts = lab.hosts()
    assert [h.name for h in hosts[:5]] == [*FLEET, "lab05"]
    assert hosts[-1].name == "lab32"
    assert len({h.address for h in hosts}) == 32

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda h: ssh(lab, h.name, "hostname"), hosts))
    assert answers == [(0, f"{h.name}\n") for h in hosts]


def test_a_client_host_builds_on_a_builder_host_over_ssh_ng(lab: Lab) -> None:
    """The reason every host has its own /nix: a shared store deadlocks this build."""
    snix = lab.host("snix")
    client_key = lab.exec(
        "slax",
        'mkdir -p .ssh && ssh-keygen -q -t ed25519 -N "" -f .ssh/builder && cat .ssh/builder.pub',
        check=True,
    ).stdout.decode()
    with snix.path("/root/.ssh/authorized_keys").open("a") as keys:
        keys.write(client_key)
    lab.exec(
        "slax",
        ["sh", "-c", "cat >> .ssh/known_hosts"],
        input=f"{snix.address} {snix.host_key_public}\n".encode(),
        check=True,
    )
    # A builder has /bin/sh and an empty PATH: no cat, no hostname.
    drv = (
        'derivation { name = "where"; system = builtins.currentSystem; builder = "/bin/sh";'
        ' args = ["-c" "read h < /proc/sys/kernel/hostname; echo $h > $out"]; }'
    )
    lab.exec("slax", ["sh", "-c", "cat > where.nix"], input=drv.encode(), check=True)
    builders = f"ssh-ng://root@{snix.address} x86_64-linux /root/.ssh/builder 1 1 - - -"
    built = lab.exec(
        "slax", ["nix-build", "where.nix", "--max-jobs", "0", "--builders", builders], timeout=60
    )
    assert built.returncode == 0, built.stderr.decode()
    out = built.stdout.decode().strip()
    assert lab.host("slax").path(out).read_text() == "snix\n"
    assert snix.path(out).read_text() == "snix\n"
