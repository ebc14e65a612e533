"""The lab on a brand-new machine (issue 13.14).

A fresh Debian 12 with ``nix-bin`` has no ``/etc/nix`` (and no ``nixbld``
group): the lab must create every mount point it binds a private directory
onto. The test gives the lab one more private directory whose mount point
does not exist on this machine, as ``/etc/nix`` does not on a fresh one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from infratool_lab import Lab, files


@pytest.fixture
def absent_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private directory for every lab host whose mount point is missing on this machine."""
    path = Path(f"/etc/infratool-fresh-{secrets.token_hex(4)}")
    assert not path.exists()
    monkeypatch.setattr(files, "PRIVATE_DIRS", (*files.PRIVATE_DIRS, str(path)))
    yield path
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def test_a_missing_mount_point_is_created_and_the_host_sees_its_own_dir(
    absent_dir: Path, lab_factory: Callable[[int], Lab]
) -> None:
    lab = lab_factory(2)  # before the fix: "mount: ...: mount point does not exist"
    for host in lab.hosts():
        (host.path(str(absent_dir)) / "who").write_text(f"{host.name}\n")
        seen = lab.exec(host.name, ["cat", f"{absent_dir}/who"], check=True)
        assert seen.stdout.decode() == f"{host.name}\n"
    # What the lab created on the machine is an empty mount point, nothing more.
    assert absent_dir.is_dir() and not any(absent_dir.iterdir())


def test_nix_conf_is_the_labs_own_and_builds_need_no_nixbld_group(lab: Lab) -> None:
    """Each host's /etc/nix is private: root builds itself there, with or without a nixbld group."""
    out = lab.exec(
        "snix",
        'nix-build --no-out-link -E \'derivation { name = "fresh"; system = builtins.currentSystem; '
        'builder = "/bin/sh"; args = ["-c" "echo ok > $out"]; }\'',
        check=True,
    )
    assert out.stdout.decode().strip().endswith("-fresh")
    assert lab.exec("snix", ["cat", "/etc/nix/nix.conf"]).stdout.decode() == files.nix_conf()
