"""Putting the emulator where ``sbctl`` would be: on the controller, or on a lab host.

Two ways, for two audiences:

* :func:`install` writes a wrapper that runs the emulator from this checkout
  with the controller's Python (tests that drive sbctl without a lab host).
* :func:`install_on_lab_host` copies the package (and its Microsoft
  certificates) into a lab host's private ``/usr/local/sbin/sbctl.d/`` and
  writes ``/usr/local/sbin/sbctl`` running it with the host's
  ``/usr/bin/python3``. Lab hosts cannot see the controller's virtualenv or
  checkout (``/root`` and ``/tmp`` are private to each host), and the system
  Python has what the emulator needs (python3-cryptography 38, PyYAML).

The firmware file of a lab host is its private
``/var/lib/sbctl-emulator/firmware.json``; :func:`set_lab_firmware` edits it
from the controller (the one step the real sbctl cannot take). Its ESP is
``/var/lib/sbctl-emulator/esp``: ``/boot`` is shared with the controller in
the lab, so it must not be the ESP of any lab host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .consts import DEFAULT_FIRMWARE_FILE, LEGACY_DATABASE_PATH, NIXPKGS_DATABASE_PATH, VERSION
from .encoding import _atomic_write
from .firmware import FirmwareState, write_firmware_state

if TYPE_CHECKING:
    from infratool_lab.fleet import Lab

LAB_SBIN = "/usr/local/sbin"
"""Where lab hosts get ``sbctl`` (private per host, on root's PATH)."""
TREE_NAME = "sbctl.d"
PACKAGE_NAME = "sbctl_emulator"
LAB_PYTHON = "/usr/bin/python3"
LAB_FIRMWARE_FILE = DEFAULT_FIRMWARE_FILE
LAB_ESP = "/var/lib/sbctl-emulator/esp"
LAB_SBCTL_HOSTS: tuple[str, ...] = ("snix", "slax", "brix")
"""Lab hosts that get sbctl; nixtv-player has none (a host without sbctl is a case to handle)."""
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
ESP_BINARIES = ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi")
"""Where a systemd-boot install puts its binary; the lab ESP gets unsigned copies."""

_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SbctlBuild:
    """What a build of sbctl bakes in with ``-ldflags -X``: its version and DatabasePath.

    The wrapper exports them as ``SBCTL_EMULATOR_VERSION`` and
    ``SBCTL_EMULATOR_DATABASE_PATH``; the strings sit in the wrapper the way
    they sit in a Go binary's data.
    """

    version: str = VERSION
    database_path: str = LEGACY_DATABASE_PATH

    def exports(self) -> str:
        """The wrapper's shell lines that set the build's values."""
        return (
            f"SBCTL_EMULATOR_VERSION={shlex.quote(self.version)}\n"
            f"SBCTL_EMULATOR_DATABASE_PATH={shlex.quote(self.database_path)}\n"
            "export SBCTL_EMULATOR_VERSION SBCTL_EMULATOR_DATABASE_PATH\n"
        )


UPSTREAM = SbctlBuild()
"""sbctl as upstream's Makefile builds it (Arch, Debian, ...): DatabasePath /usr/share/secureboot/."""
NIXPKGS = SbctlBuild(database_path=NIXPKGS_DATABASE_PATH)
"""pkgs.sbctl: nixpkgs sets DatabasePath to /etc/secureboot."""


def install(dest_dir: Path, python: str = sys.executable) -> Path:
    """Write ``dest_dir/sbctl``: a shell wrapper running this emulator from the checkout.

    PYTHONPATH points at the checkout containing ``infratool`` so the wrapper
    works without installing the package; ``-P`` keeps the caller's working
    directory off ``sys.path`` so a stray ``infratool`` there cannot shadow it.
    """
    package_parent = _PACKAGE_DIR.parents[2]
    script = (
        "#!/bin/sh\n"
        "# sbctl emulator (infratool lab): see lab/infratool_lab/sbctl/\n"
        f"PYTHONPATH={shlex.quote(str(package_parent))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(python)} -P -m infratool_lab.sbctl "$@"\n'
    )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "sbctl"
    _atomic_write(str(target), script.encode(), 0o755)
    return target


def install_tree(
    dest_dir: Path, python: str = LAB_PYTHON, seen_as: str | None = None, build: SbctlBuild = UPSTREAM
) -> Path:
    """Copy the emulator to ``dest_dir/sbctl.d/`` and write ``dest_dir/sbctl`` running that copy.

    The copy needs nothing from ``infratool``: the package's imports are
    relative. ``seen_as`` is ``dest_dir`` as the machine that runs the wrapper
    sees it (a lab host sees ``<lab>/snix/usr/local/sbin`` as
    ``/usr/local/sbin``). ``-I`` (isolated mode) keeps the caller's
    PYTHONPATH, user site-packages and working directory out, as a root
    tool should.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tree = dest_dir / TREE_NAME
    _replace_tree(tree, _PACKAGE_DIR)
    runtime = f"{(seen_as or str(dest_dir)).rstrip('/')}/{TREE_NAME}"
    code = (
        f"import sys; sys.path.insert(0, {json.dumps(runtime)}); "
        f"from {PACKAGE_NAME}.cli import main; sys.exit(main())"
    )
    script = (
        "#!/bin/sh\n"
        "# sbctl emulator (infratool lab, a copy of lab/infratool_lab/sbctl/ in sbctl.d/)\n"
        + build.exports()
        + f'exec {shlex.quote(python)} -I -c {shlex.quote(code)} "$@"\n'
    )
    target = dest_dir / "sbctl"
    _atomic_write(str(target), script.encode(), 0o755)
    return target


def _replace_tree(tree: Path, package: Path) -> None:
    """Make ``tree/<PACKAGE_NAME>`` a fresh copy of ``package`` (swapped in by renames)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{TREE_NAME}.", dir=tree.parent))
    try:
        shutil.copytree(package, staging / PACKAGE_NAME, ignore=shutil.ignore_patterns("__pycache__"))
        os.chmod(staging, 0o755)
        old = None
        if tree.exists():
            old = tree.with_name(f".{TREE_NAME}.old.{os.getpid()}")
            os.replace(tree, old)
        os.replace(staging, tree)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def install_on_lab_host(
    lab: Lab, name: str, firmware: dict[str, Any] | None = None, build: SbctlBuild = UPSTREAM
) -> Path:
    """Install the emulator on lab host ``name``; return the wrapper's controller-side path.

    ``build`` picks the sbctl build it behaves as (:data:`UPSTREAM`, :data:`NIXPKGS`, a version).

    Also gives the host an ESP under its private ``/var/lib`` holding unsigned
    systemd-boot copies (what ``sbctl verify`` finds before lanzaboote signs
    anything) and, unless it has one, a firmware file: a fresh UEFI machine in
    Setup Mode, updated with ``firmware`` fields when given.
    """
    host = lab.host(name)
    wrapper = install_tree(host.path(LAB_SBIN), seen_as=LAB_SBIN, build=build)
    esp = host.path(LAB_ESP)
    for rel in ESP_BINARIES:
        target = esp / rel
        if not target.exists() and SYSTEMD_BOOT.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SYSTEMD_BOOT, target)
    if firmware is not None or not host.path(LAB_FIRMWARE_FILE).exists():
        set_lab_firmware(lab, name, **(firmware or {}))
    return wrapper


def set_lab_firmware(lab: Lab, name: str, **fields: Any) -> Path:
    """Update lab host ``name``'s emulated firmware with ``fields`` (see :class:`FirmwareState`).

    Fields not given keep their current value; the ESP defaults to the
    host's private :data:`LAB_ESP`. Unknown fields raise ValueError, so a
    typo cannot silently leave the firmware as it was.
    """
    path = lab.host(name).path(LAB_FIRMWARE_FILE)
    current: dict[str, Any] = {"esp": LAB_ESP}
    if path.exists():
        current = json.loads(path.read_text())
    current.update(fields)
    write_firmware_state(path, FirmwareState.from_json(current))
    return path


LAB_ETC_SECUREBOOT = "/var/lib/sbctl-emulator/etc-secureboot"
"""Where a lab host's ``/etc/secureboot`` really is (private to the host, see :func:`etc_secureboot`)."""
ETC_SECUREBOOT = Path("/etc/secureboot")


def etc_secureboot(lab: Lab, name: str, create: bool = True) -> Path:
    """Give lab host ``name`` its own ``/etc/secureboot``; return its controller-side path.

    Lab hosts share the controller's /etc, and for nixpkgs' sbctl the mere
    existence of /etc/secureboot matters, so it cannot be a shared directory
    nor a bind-mount point (which would exist on every host). Instead
    ``/etc/secureboot`` on the controller is a symlink to
    :data:`LAB_ETC_SECUREBOOT`, which each host resolves in its own private
    ``/var/lib``: it exists exactly on the hosts whose target exists
    (``create``), and on the controller it dangles. A real directory there
    is never replaced.
    """
    if ETC_SECUREBOOT.is_symlink():
        if os.readlink(ETC_SECUREBOOT) != LAB_ETC_SECUREBOOT:
            raise RuntimeError(f"{ETC_SECUREBOOT} is a symlink elsewhere; the lab will not replace it")
    elif ETC_SECUREBOOT.exists():
        raise RuntimeError(
            f"{ETC_SECUREBOOT} is a real directory on this machine; the lab will not replace it"
        )
    else:
        # Another worker may make it at the same moment.
        with contextlib.suppress(FileExistsError):
            ETC_SECUREBOOT.symlink_to(LAB_ETC_SECUREBOOT)
    target = lab.host(name).path(LAB_ETC_SECUREBOOT)
    if create:
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
    return target


def provision_lab(lab: Lab, hosts: Iterable[str] = LAB_SBCTL_HOSTS) -> list[Path]:
    """Install the emulator on the lab hosts that have sbctl (default: snix, slax, brix)."""
    present = {h.name for h in lab.hosts()}
    return [install_on_lab_host(lab, name) for name in hosts if name in present]
