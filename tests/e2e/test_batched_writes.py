"""Real-lab tests of the engine's batched writes (Remote.put_files, DeferredWrites, back-to-back entries).

Kept beside the benchmark that motivated them; run with
``pytest -q bench/test_batched_writes.py`` (root, like the lab). Each test
module run starts its own two-host lab on a free 127.201.x subnet.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from infratool_lab import Lab

from infratool import hostlock, inventory
from infratool.errors import CommandFailed
from infratool.remote import FileWrite, PartialWrite, Remote, payload_sizes, put_files_script
from infratool.secrets.secret import Secret


@pytest.fixture
def lab(lab_factory):
    """Two lab hosts (snix, slax)."""
    return lab_factory(2)


@pytest.fixture
def remote(lab):
    """An open connection to the first lab host."""
    host = next(iter(inventory.load(lab.inventory_path)))
    with Remote(host) as r:
        yield r


def _stat(lab: Lab, path: str) -> str:
    return lab.exec("snix", f"stat -c '%U:%G %a' {path}", check=True).stdout.decode().strip()


def test_put_files_writes_each_file_with_its_mode_owner_and_exact_bytes(lab, remote):
    lab.exec(
        "snix",
        "rm -rf /var/lib/pf && mkdir -p /var/lib/pf && echo old > /var/lib/pf/keep "
        "&& chown nobody:nogroup /var/lib/pf/keep && chmod 604 /var/lib/pf/keep",
        check=True,
    )
    binary = bytes(range(256)) * 2 + b"\n\n"
    commands_before = remote.commands_run
    remote.put_files(
        [
            FileWrite("/var/lib/pf/new/deep/a", b"hello\n", 0o640),
            FileWrite("/var/lib/pf/keep", b"replaced\n"),  # keeps mode and owner
            FileWrite("/var/lib/pf/bin", binary, 0o600),
            FileWrite("/var/lib/pf/empty", b"", 0o644),
            FileWrite("/var/lib/pf/secret", Secret("canary-7f3a"), 0o600, "nobody", "nogroup"),
        ]
    )
    assert remote.commands_run == commands_before + 1  # one round trip for five files
    host = lab.host("snix")
    assert host.path("/var/lib/pf/new/deep/a").read_bytes() == b"hello\n"
    assert host.path("/var/lib/pf/keep").read_bytes() == b"replaced\n"
    assert host.path("/var/lib/pf/bin").read_bytes() == binary
    assert host.path("/var/lib/pf/empty").read_bytes() == b""
    assert host.path("/var/lib/pf/secret").read_bytes() == b"canary-7f3a"
    assert _stat(lab, "/var/lib/pf/new/deep/a") == "root:root 640"
    assert _stat(lab, "/var/lib/pf/keep") == "nobody:nogroup 604"
    assert _stat(lab, "/var/lib/pf/secret") == "nobody:nogroup 600"
    assert not [p for p in host.path("/var/lib/pf").rglob(".infratool.*")]


def test_put_files_stops_at_the_first_failure_and_says_how_far_it_got(lab, remote):
    lab.exec("snix", "rm -rf /var/lib/pf2 && mkdir -p /var/lib/pf2 && echo x > /var/lib/pf2/file", check=True)
    with pytest.raises(PartialWrite) as info:
        remote.put_files(
            [
                FileWrite("/var/lib/pf2/one", b"1"),
                FileWrite("/var/lib/pf2/file/below", b"2"),  # its directory is a file
                FileWrite("/var/lib/pf2/three", b"3"),
            ]
        )
    assert info.value.written == 1
    assert "/var/lib/pf2/file/below" in str(info.value)
    names = sorted(p.name for p in lab.host("snix").path("/var/lib/pf2").iterdir())
    assert names == ["file", "one"]  # nothing after the failure, no temp file left


def test_writes_sharing_a_directory_stop_at_a_failure_inside_it_and_leave_no_temp_dir(lab, remote):
    # Writes to one directory in a row share one temp directory (one subshell):
    # a failure in the middle still keeps the earlier files, writes none after
    # it, and removes the shared temp directory.
    lab.exec(
        "snix", "rm -rf /var/lib/pf4 && mkdir -p /var/lib/pf4/sub && echo old > /var/lib/pf4/c", check=True
    )
    with pytest.raises(PartialWrite) as info:
        remote.put_files(
            [
                FileWrite("/var/lib/pf4/a", b"1", 0o600),
                FileWrite("/var/lib/pf4/b", b"2", 0o600),
                FileWrite("/var/lib/pf4/sub", b"3"),  # a directory: refused
                FileWrite("/var/lib/pf4/c", b"4"),
            ]
        )
    assert info.value.written == 2
    assert "is a directory" in str(info.value)
    host = lab.host("snix")
    assert sorted(p.name for p in host.path("/var/lib/pf4").iterdir()) == ["a", "b", "c", "sub"]
    assert host.path("/var/lib/pf4/b").read_bytes() == b"2"
    assert host.path("/var/lib/pf4/c").read_bytes() == b"old\n"
    assert _stat(lab, "/var/lib/pf4/a") == "root:root 600"


@pytest.mark.parametrize("cut", [1, 2, 9])
def test_a_stream_cut_short_never_replaces_the_file(lab, remote, cut):
    lab.exec("snix", "mkdir -p /var/lib/pf3 && echo original > /var/lib/pf3/f", check=True)
    writes = [FileWrite("/var/lib/pf3/f", b"new content\n", 0o644)]
    res = remote.run(
        put_files_script(writes, payload_sizes(writes)), stdin=b"new content\n\n"[:-cut], check=False
    )
    assert res.exited != 0 and "ok" not in res.stdout
    assert lab.host("snix").path("/var/lib/pf3/f").read_bytes() == b"original\n"
    assert not list(lab.host("snix").path("/var/lib/pf3").glob(".infratool.*"))


def test_a_converge_sends_one_write_script_per_host_and_a_noop_sends_none(lab, tmp_path):
    playbook = tmp_path / "pb.yaml"
    tasks = "".join(
        f"  - task: files.content\n    with: {{path: /var/lib/pf4/f{i}, content: 'v{i}', mode: '0640'}}\n"
        for i in range(4)
    )
    playbook.write_text(
        f"name: t\nhosts: all\ntasks:\n{tasks}"
        "  - task: nix.settings\n    with: {settings: {max-jobs: 3}}\n"
    )

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "infratool",
                "-i",
                str(lab.inventory_path),
                "--json",
                "run",
                str(playbook),
                "--yes",
            ],
            capture_output=True,
            text=True,
            env={"INFRATOOL_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "PATH": "/usr/bin:/bin"},
        )

    for h in lab.hosts():
        h.sshd_log.write_text("")
    first = run()
    assert first.returncode == 0, first.stderr
    for h in lab.hosts():
        assert h.path("/var/lib/pf4/f3").read_text() == "v3"
        assert "max-jobs = 3" in h.path("/etc/nix/nix.conf").read_text().splitlines()
        # sshd logs each session channel's command start: facts, and one write
        # script that also takes the run lock (issue 13 item 9) and drops it.
        assert h.sshd_log.read_text().count("Starting session: command") == 2, h.sshd_log.read_text()[-2000:]
        assert not h.path(hostlock.LOCK_PATH).is_symlink()
    for h in lab.hosts():
        h.sshd_log.write_text("")
    again = run()
    assert again.returncode == 0, again.stderr
    for h in lab.hosts():
        assert h.sshd_log.read_text().count("Starting session: command") == 1  # facts only: no lock


def test_a_failed_write_fails_its_change_and_keeps_the_earlier_ones(lab, tmp_path):
    lab.exec(
        "snix", "rm -rf /var/lib/pf5 && mkdir -p /var/lib/pf5 && echo x > /var/lib/pf5/blocker", check=True
    )
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        "name: t\nhosts: snix\ntasks:\n"
        "  - task: files.content\n    with: {path: /var/lib/pf5/a, content: 'a'}\n"
        "  - task: files.content\n    with: {path: /var/lib/pf5/blocker/b, content: 'b'}\n"
        "  - task: files.content\n    with: {path: /var/lib/pf5/c, content: 'c'}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infratool",
            "-i",
            str(lab.inventory_path),
            "--json",
            "run",
            str(playbook),
            "--yes",
        ],
        capture_output=True,
        text=True,
        env={"INFRATOOL_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    import json

    result = {r["host"]: r for r in json.loads(proc.stdout)["results"]}["snix"]
    assert result["status"] == "failed"
    assert result["applied"] == ["create /var/lib/pf5/a (mode 0644)"]
    assert "/var/lib/pf5/blocker/b" in result["error"]
    assert sorted(p.name for p in lab.host("snix").path("/var/lib/pf5").iterdir()) == ["a", "blocker"]


def test_command_failed_is_what_a_single_write_raises(remote):
    # put_file (not batched) keeps raising the plain CommandFailed it always did.
    with pytest.raises(CommandFailed):
        remote.put_file("/proc/version/x", b"nope")
