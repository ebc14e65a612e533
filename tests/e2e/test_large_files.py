"""Large managed files on a real lab (issue 19 §3): streamed to the host, hash-checked, diffs capped.

The controller's memory is measured by bench/memory.py, never asserted
here; these tests pin what bounds it: content goes out in chunks from the
local source, the apply re-reads the source and refuses one that no longer
hashes to what the plan showed, and the plan's diff stays short.
"""

from __future__ import annotations

import hashlib
import string

import pytest

from infratool import inventory
from infratool.changes import ACTIONS
from infratool.context import HostContext
from infratool.errors import CommandFailed
from infratool.remote import FileWrite, PartialWrite, Remote, StreamedContent
from infratool.remote.writes import CHUNK
from infratool.tasks.lib import files as _files  # noqa: F401  (registers files.stream)
from infratool.tasks.lib.source import LocalSource


@pytest.fixture
def lab(lab_factory):
    """Two lab hosts (snix, slax)."""
    return lab_factory(2)


@pytest.fixture
def remote(lab):
    """An open connection to snix."""
    host = next(h for h in inventory.load(lab.inventory_path) if h.name == "snix")
    with Remote(host) as r:
        yield r


def _temp_dirs(lab, directory: str) -> list[str]:
    return [p.name for p in lab.host("snix").path(directory).iterdir() if p.name.startswith(".infratool.")]


def test_a_large_template_is_streamed_exactly_and_its_plan_diff_is_capped(lab, cli, tmp_path):
    tpl = tmp_path / "big.tpl"
    tpl.write_text("".join(f"{i:07d} served by $host at $address\n" for i in range(120_000)))  # ~4.4 MB
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(
        "name: big\nhosts: all\ntasks:\n"
        "  - task: files.content\n    with: {path: /var/lib/big/site.txt, template: big.tpl, mode: '0644'}\n"
    )
    inv = lab.inventory_path
    plan = cli("-i", inv, "plan", playbook)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("more lines, diff too large") == 2  # one capped diff per host
    assert len(plan.stdout) < 100_000, len(plan.stdout)

    run = cli("-i", inv, "run", playbook, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    for h in inventory.load(inv):
        expected = string.Template(tpl.read_text()).safe_substitute(
            host=h.name, address=h.address, user=h.user
        )
        written = lab.host(h.name).path("/var/lib/big/site.txt")
        assert written.read_bytes() == expected.encode()
        assert written.stat().st_mode & 0o777 == 0o644

    again = cli("-i", inv, "plan", playbook, "--detailed-exitcode")
    assert again.returncode == 0 and "Plan: 0 change(s)" in again.stdout, again.stdout


def test_streamed_content_is_sent_in_chunks_and_checked_against_the_plans_hash(lab, remote):
    lab.exec("snix", "rm -rf /var/lib/st && mkdir -p /var/lib/st && echo keep > /var/lib/st/f", check=True)
    data = bytes(range(256)) * 8192  # 2 MiB
    sent: list[int] = []

    def chunks():
        for i in range(0, len(data), 100_000):
            sent.append(100_000)
            yield data[i : i + 100_000]

    good = StreamedContent(len(data), hashlib.sha256(data).hexdigest(), chunks, label="blob")
    remote.put_files([FileWrite("/var/lib/st/g", good, 0o600)])
    assert lab.host("snix").path("/var/lib/st/g").read_bytes() == data
    assert len(sent) == 21  # pulled from the source piece by piece, as the channel took them

    stale = StreamedContent(len(data), hashlib.sha256(b"what the plan saw").hexdigest(), chunks, label="blob")
    with pytest.raises(PartialWrite) as info:
        remote.put_files([FileWrite("/var/lib/st/a", b"first\n"), FileWrite("/var/lib/st/f", stale)])
    assert info.value.written == 1
    assert "blob changed since the plan read it (sha256 differs): not written" in str(info.value)
    assert lab.host("snix").path("/var/lib/st/f").read_bytes() == b"keep\n"  # untouched
    assert lab.host("snix").path("/var/lib/st/a").read_bytes() == b"first\n"

    short = StreamedContent(CHUNK * 3, good.sha256, lambda: iter([data[:10]]), label="blob")
    with pytest.raises(PartialWrite, match="changed since the plan read it \\(smaller\\)"):
        remote.put_files([FileWrite("/var/lib/st/f", short)])
    assert lab.host("snix").path("/var/lib/st/f").read_bytes() == b"keep\n"
    assert _temp_dirs(lab, "/var/lib/st") == []


def test_the_apply_rereads_the_source_and_refuses_one_edited_since_the_plan(lab, remote, tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(b"v1\n" * 200_000)
    planned = hashlib.sha256(source.read_bytes()).hexdigest()
    hctx = HostContext(remote.host, facts=None, remote=remote)
    args = {
        "path": "/var/lib/st2/data",
        "source": str(source),
        "variables": None,
        "size": source.stat().st_size,
        "sha256": planned,
        "mode": 0o640,
        "owner": None,
        "group": None,
        "expect": "A",
    }
    source.write_bytes(b"v2\n" * 200_000)  # same size, other bytes
    with pytest.raises(CommandFailed, match="changed since the plan read it"):
        ACTIONS["files.stream"](hctx, **args)
    assert not lab.host("snix").path("/var/lib/st2/data").exists()

    source.write_bytes(b"v1\n" * 200_000)  # back to what the plan hashed
    ACTIONS["files.stream"](hctx, **args)
    assert lab.host("snix").path("/var/lib/st2/data").read_bytes() == b"v1\n" * 200_000


def test_a_source_that_fails_while_sent_is_refused_without_hanging(lab, tmp_path):
    # Before: the error escaped the thread feeding stdin, which then never
    # closed it, and the host's script waited for the rest forever (here: the
    # 20 s deadline). Now the file is refused at once, naming the reason.
    host = next(h for h in inventory.load(lab.inventory_path) if h.name == "snix")
    bad = tmp_path / "bad.tpl"
    bad.write_bytes(b"ok line\n" * 40_000 + b"\xff\xfe not utf-8\n")
    source = LocalSource(str(bad), {"host": "snix"})
    with Remote(host, command_timeout=20) as remote:
        content = StreamedContent(bad.stat().st_size, "0" * 64, source.chunks, label=str(bad))
        with pytest.raises(PartialWrite) as info:
            remote.put_files([FileWrite("/var/lib/st3/f", content)])
    assert f"cannot read {bad}" in str(info.value) and "not UTF-8" in str(info.value)
    assert not lab.host("snix").path("/var/lib/st3/f").exists()
