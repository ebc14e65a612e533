"""Plans never show content infratool did not write (issue 13 items 3-4), against a real lab.

A plan is printed, logged and saved as JSON: it must not become a way to
read a private file (a rotated token, 0600) or whatever a symlink planted by
a service user points to. The racing test has ``nobody``, who owns the
directory, flip the file between a world-readable file and a symlink to a
root-only file while the plan reads it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from infratool_lab import Lab

CANARY = "canary-plan-leak-91d2"
APP = "/var/lib/app"
VICTIM = "/var/lib/victim"

FLIP = r"""
cd /var/lib/app || exit 1
while :; do
  ln -sfn /var/lib/victim t1 && mv -T t1 conf
  printf 'public=1\n' > t2 && chmod 644 t2 && mv -T t2 conf
done
"""


@pytest.fixture
def lab(lab_factory) -> Lab:
    """Two lab hosts (snix, slax)."""
    return lab_factory(2)


def _playbook(tmp_path: Path, path: str, content: str = "public=2\n", hosts: str = "all") -> Path:
    book = tmp_path / "pb.yaml"
    book.write_text(
        yaml.safe_dump(
            {
                "name": "leak",
                "hosts": hosts,
                "tasks": [{"task": "files.content", "with": {"path": path, "content": content}}],
            }
        )
    )
    return book


def _setup(lab: Lab, host: str = "snix") -> None:
    lab.exec(
        host,
        f"set -e; rm -rf {APP}; mkdir -p {APP}; chown nobody:nogroup {APP}; "
        f"printf '%s\\n' {CANARY} > {VICTIM}; chmod 600 {VICTIM}",
        check=True,
    )


def _plans(cli, lab: Lab, book: Path) -> str:
    text = cli("-i", lab.inventory_path, "plan", book)
    js = cli("-i", lab.inventory_path, "--json", "plan", book)
    assert text.returncode in (0, 1, 2) and js.returncode in (0, 1, 2), text.stderr + js.stderr
    return text.stdout + text.stderr + js.stdout + js.stderr


def test_a_private_file_is_never_diffed(lab, cli, tmp_path):
    """Item 4: files.content over an existing 0600 token: placeholder, in text and --json."""
    _setup(lab)
    lab.exec("snix", f"printf '%s\\n' {CANARY} > {APP}/token && chmod 600 {APP}/token", check=True)
    out = _plans(cli, lab, _playbook(tmp_path, f"{APP}/token", "public=2\n", "snix"))
    assert CANARY not in out
    assert "(content of a 0600 file: not shown)" in out
    data = json.loads(cli("-i", lab.inventory_path, "--json", "plan", tmp_path / "pb.yaml").stdout)
    diffs = [c["diff"] for c in data["changes"]]
    assert diffs and all("(content of a 0600 file: not shown)" in d for d in diffs)


def test_a_symlink_target_is_never_read(lab, cli, tmp_path):
    """Item 4: the fact does not follow a symlink; the plan replaces the link, shows nothing of the target."""
    _setup(lab)
    lab.exec("snix", f"ln -s {VICTIM} {APP}/conf", check=True)
    book = _playbook(tmp_path, f"{APP}/conf", "public=2\n", "snix")
    out = _plans(cli, lab, book)
    assert CANARY not in out
    assert "(content of a symlink target: not shown)" in out
    assert "replace symlink" in out
    run = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert lab.exec("snix", f"cat {VICTIM}; stat -c %F {APP}/conf", check=True).stdout.decode() == (
        f"{CANARY}\nregular file\n"
    )


def test_a_symlinked_parent_directory_is_never_read_through(lab, cli, tmp_path):
    """Item 4 through a parent: nobody's {APP}/d -> a directory of root's holding a 0644 file.
    The fact reports the path as resolving elsewhere; the plan fails that host naming it
    and shows nothing of the file; the run writes nothing there."""
    _setup(lab)
    lab.exec(
        "snix",
        f"set -e; mkdir -p /var/lib/victimdir; printf '%s\\n' {CANARY} > /var/lib/victimdir/conf; "
        f"chmod 644 /var/lib/victimdir/conf; setpriv --reuid=nobody --regid=nogroup --clear-groups "
        f"ln -s /var/lib/victimdir {APP}/d",
        check=True,
    )
    book = _playbook(tmp_path, f"{APP}/d/conf", "public=2\n", "snix")
    out = _plans(cli, lab, book)
    assert CANARY not in out
    assert f"{APP}/d/conf: a parent directory is a symlink" in out
    run = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert run.returncode == 1, run.stdout + run.stderr
    assert lab.exec("snix", "cat /var/lib/victimdir/conf", check=True).stdout.decode() == f"{CANARY}\n"


def test_a_racing_owner_cannot_make_a_plan_show_a_root_file(lab, cli, tmp_path):
    """Item 4, raced: nobody flips the file between a 0644 file and a symlink to a 0600 root file."""
    _setup(lab)
    lab.exec("snix", f"printf 'public=1\\n' > {APP}/conf && chmod 644 {APP}/conf", check=True)
    book = _playbook(tmp_path, f"{APP}/conf", "public=2\n", "snix")
    pid = int(
        lab.exec(
            "snix",
            f"setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c '{FLIP}' >/dev/null 2>&1 </dev/null & "
            "echo $!",
            check=True,
        ).stdout.decode()
    )
    seen = set()
    try:
        time.sleep(0.2)
        for _ in range(6):
            out = _plans(cli, lab, book)
            assert CANARY not in out
            seen |= {m for m in ("-public=1", "symlink target") if m in out}
    finally:
        lab.exec("snix", f"kill {pid}")
    assert seen, "the plans never saw the file: the race proved nothing"


def test_a_directory_destination_fails_that_host_only(lab, cli, tmp_path):
    """Item 3: files.content onto a directory fails snix with a clear message; slax is still applied."""
    for host in ("snix", "slax"):
        _setup(lab, host)
    lab.exec("snix", f"mkdir {APP}/token", check=True)
    book = _playbook(tmp_path, f"{APP}/token", "x=1\n")
    run = cli("-i", lab.inventory_path, "run", book, "--yes")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "is not a regular file" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert lab.exec("slax", f"cat {APP}/token", check=True).stdout == b"x=1\n"
    assert lab.exec("snix", f"ls -A {APP}/token {APP}", check=True).stdout.decode().count(".infratool") == 0


def test_a_rotation_consumer_file_is_never_read_nor_diffed(lab, cli, tmp_path):
    """Item 4: files.content over a file the rotation policy delivers a secret to, even a 0644 one."""
    _setup(lab)
    lab.exec("snix", f"printf '%s\\n' {CANARY} > {APP}/pub && chmod 644 {APP}/pub", check=True)
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(
        "secrets:\n  app/token:\n    file: secrets/app.yaml\n    generator: hex\n    consumers:\n"
        f"      - host: snix\n        file: {{path: {APP}/pub, mode: '0644'}}\n"
    )
    out = _plans(cli, lab, _playbook(tmp_path, f"{APP}/pub", "public=2\n", "snix"))
    assert CANARY not in out
    assert "(secret content: not shown)" in out
