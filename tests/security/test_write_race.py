"""A hostile owner of the destination directory races infratool's remote write (issue 13, items 1-3).

Each test runs a real lab host and a real attacker: a shell loop running as
``nobody`` inside the host's namespaces, owning ``/var/lib/app`` (the
directory of a consumer file), swapping whatever infratool creates there for
symlinks to root-owned files while the writes run. The tests count the
attacker's swaps, so a run where the attacker never got a chance cannot pass
for a defence.
"""

from __future__ import annotations

import time

import pytest
from infratool_lab import Lab

from infratool import inventory
from infratool.context import HostContext
from infratool.errors import CommandFailed
from infratool.facts import FactCache
from infratool.remote import FileWrite, Remote
from infratool.secrets.secret import Secret
from infratool.tasks.binary_cache.install import put_checked

APP = "/var/lib/app"
VICTIM = "/var/lib/victim"
VICTIM_DIR = "/var/lib/victimdir"

# The attacker: a tight loop as nobody in /var/lib/app. Every temp name
# infratool makes there (a file or a directory) is replaced by a symlink to
# a root-owned file (or directory); each swap is counted in .swaps.
ATTACK = r"""
cd /var/lib/app || exit 1
n=0
while :; do
  for f in .infratool.*; do
    [ -L "$f" ] && continue
    if [ -d "$f" ]; then
      mv -T -- "$f" ".moved.$n" 2>/dev/null && ln -s /var/lib/victimdir "$f" 2>/dev/null || continue
    elif [ -e "$f" ]; then
      rm -f -- "$f" 2>/dev/null && ln -s /var/lib/victim "$f" 2>/dev/null || continue
    else
      continue
    fi
    n=$((n + 1))
    echo "$n" > .swaps
  done
done
"""


@pytest.fixture
def lab(lab_factory) -> Lab:
    """One lab host (snix)."""
    return lab_factory(1)


@pytest.fixture
def remote(lab: Lab):
    """An open connection to the lab host."""
    host = next(iter(inventory.load(lab.inventory_path)))
    with Remote(host) as r:
        yield r


def _setup(lab: Lab) -> None:
    lab.exec(
        "snix",
        f"set -e; rm -rf {APP} {VICTIM} {VICTIM_DIR}; mkdir -p {APP} {VICTIM_DIR}; "
        f"printf 'token-old\\n' > {APP}/token; chown -R nobody:nogroup {APP}; chmod 600 {APP}/token; "
        f"printf 'ROOT-ONLY\\n' > {VICTIM}; chmod 600 {VICTIM}; chmod 700 {VICTIM_DIR}",
        check=True,
    )


def _start_attacker(lab: Lab) -> int:
    res = lab.exec(
        "snix",
        "setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c "
        f"'{ATTACK}' >/dev/null 2>&1 </dev/null & echo $!",
        check=True,
    )
    time.sleep(0.2)
    return int(res.stdout.decode().strip())


def _stop_attacker(lab: Lab, pid: int) -> int:
    lab.exec("snix", f"kill {pid}; sleep 0.1")
    out = lab.exec("snix", f"cat {APP}/.swaps 2>/dev/null || echo 0").stdout.decode().strip()
    return int(out or 0)


def _victims(lab: Lab) -> str:
    """Owner, mode and content of every root-owned thing the attacker aims at."""
    return lab.exec(
        "snix",
        f"stat -c '%n %U:%G %a %F' {VICTIM} {VICTIM_DIR}; cat {VICTIM}; ls -A {VICTIM_DIR}",
        check=True,
    ).stdout.decode()


def _binary_cache_write(remote: Remote, value: Secret) -> None:
    host = remote.host
    put_checked(
        HostContext(host, FactCache(host.name), remote), f"{APP}/token", value, 0o600, "nobody", "nogroup"
    )


def _engine_write(remote: Remote, value: Secret) -> None:
    remote.put_files([FileWrite(f"{APP}/token", value, 0o600, "nobody", "nogroup")])


@pytest.mark.parametrize("write", [_engine_write, _binary_cache_write], ids=["put_files", "binary_cache"])
def test_a_racing_directory_owner_never_redirects_a_root_write(lab, remote, write):
    """Item 1: 25 rotations of a consumer file while nobody swaps the temp names for symlinks."""
    _setup(lab)
    before = _victims(lab)
    pid = _start_attacker(lab)
    failures = 0
    try:
        for i in range(25):
            try:
                write(remote, Secret(f"canary-{i}-4c1e\n"))
            except CommandFailed:
                failures += 1  # refusing is fine; writing elsewhere is not
    finally:
        swaps = _stop_attacker(lab, pid)
    assert swaps > 0, "the attacker never raced a write: the test proved nothing"
    assert _victims(lab) == before, "a root-owned file or directory was written or chowned"
    assert failures < 25
    token = lab.exec("snix", f"stat -c '%U:%G %a %F' {APP}/token", check=True).stdout.decode().strip()
    assert token == "nobody:nogroup 600 regular file"
    # Nothing of ours is left where the attacker could read it.
    left = lab.exec("snix", f"grep -rl canary {APP} {VICTIM_DIR} 2>/dev/null; true").stdout.decode()
    assert "canary" not in left
    assert all(line.endswith("/token") or "/.moved." in line for line in left.split()), (
        f"secret copies left behind: {left}"
    )


def test_a_symlinked_parent_directory_is_refused_naming_it(lab, remote):
    """Item 2: /var/lib/plink -> /var/lib/victimdir: the write is refused, the target untouched."""
    _setup(lab)
    lab.exec("snix", f"ln -sfn {VICTIM_DIR} /var/lib/plink", check=True)
    with pytest.raises(CommandFailed) as err:
        remote.put_file("/var/lib/plink/token", b"x\n", 0o600)
    assert "/var/lib/plink" in str(err.value)
    assert "symlink" in str(err.value)
    assert lab.exec("snix", f"ls -A {VICTIM_DIR}", check=True).stdout == b""


def test_a_destination_that_is_a_directory_fails_and_leaves_nothing(lab, remote):
    """Item 3: the write fails with a clear message; no temp file is left in or beside it."""
    _setup(lab)
    lab.exec("snix", f"rm -f {APP}/token && mkdir {APP}/token", check=True)
    with pytest.raises(CommandFailed) as err:
        remote.put_file(f"{APP}/token", Secret("canary-dir-77\n"), 0o600)
    assert "is a directory" in str(err.value)
    assert f"{APP}/token" in str(err.value)
    left = lab.exec("snix", f"ls -A {APP} {APP}/token", check=True).stdout.decode()
    assert ".infratool" not in left
    assert lab.exec("snix", f"grep -rl canary-dir {APP}; true").stdout == b""


def test_a_destination_symlink_is_replaced_not_followed(lab, remote):
    """A consumer file swapped for a symlink to a root file: the link is replaced, the root file untouched."""
    _setup(lab)
    lab.exec("snix", f"rm -f {APP}/token && ln -s {VICTIM} {APP}/token", check=True)
    before = _victims(lab)
    remote.put_file(f"{APP}/token", b"new\n")
    assert _victims(lab) == before
    out = lab.exec("snix", f"stat -c '%U:%G %a %F' {APP}/token; cat {APP}/token", check=True).stdout
    assert out.decode() == "root:root 644 regular file\nnew\n"


@pytest.mark.parametrize("plant", ["ln -s", "ln"])
def test_a_mode_change_never_reaches_a_file_swapped_in(lab, remote, plant):
    """chmod/chown of an existing consumer file: a symlink or hard link planted there is refused."""
    _setup(lab)
    lab.exec("snix", f"rm -f {APP}/token && {plant} {VICTIM} {APP}/token", check=True)
    before = _victims(lab)
    with pytest.raises(CommandFailed) as err:
        remote.set_meta(f"{APP}/token", 0o644, "nobody", "nogroup")
    assert f"{APP}/token" in str(err.value)
    assert _victims(lab) == before
    assert ".infratool" not in lab.exec("snix", f"ls -A {APP}", check=True).stdout.decode()


def test_a_mode_change_of_a_plain_file_applies(lab, remote):
    _setup(lab)
    remote.set_meta(f"{APP}/token", 0o640, None, "root")
    out = lab.exec("snix", f"stat -c '%U:%G %a %h' {APP}/token; ls -A {APP}", check=True).stdout.decode()
    assert out == "nobody:root 640 1\ntoken\n"
