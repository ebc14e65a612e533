"""Secure Boot helpers (DESIGN.md capability 4): sbctl keys, their encrypted backup, lanzaboote, enrollment.

Tasks (registered on import):

* ``secureboot.status`` — readiness per host (``infratool secureboot status``);
* ``secureboot.create_keys`` — ``sbctl create-keys`` where no keys exist;
* ``secureboot.backup`` / ``secureboot.check_backup`` / ``secureboot.restore``
  — the key directory, sops-encrypted in ``secrets/secureboot/<host>.yaml``;
* ``secureboot.lanzaboote`` — generated NixOS module (``pkiBundle`` detected)
  and the flake input snippet;
* ``secureboot.enroll`` — ``sbctl enroll-keys`` behind every guard (Setup
  Mode, verified backup, typed confirmation, never unattended);
* ``secureboot.migrate`` — ``sbctl setup --migrate`` where nixpkgs' sbctl
  still uses ``/etc/secureboot``.

Modules: :mod:`.hostinfo` (facts: key directories), :mod:`.sbctlstate` (facts:
what sbctl reports), :mod:`.keyfiles` (key files in and out of hosts),
:mod:`.backupfile` (the sops file), :mod:`.report` (verdicts),
:mod:`.common` (shared task base), :mod:`.keytasks`, :mod:`.enroll`,
:mod:`.lanzaboote`, :mod:`.migrate`, :mod:`.vendorcerts`. The journey is in docs/secure-boot.md.
"""

from infratool.tasks.secureboot.enroll import CONFIRM_PREFIX, Enroll, confirmation
from infratool.tasks.secureboot.keytasks import Backup, CheckBackup, CreateKeys, Restore, Status
from infratool.tasks.secureboot.lanzaboote import Lanzaboote, render_flake_input, render_module
from infratool.tasks.secureboot.migrate import Migrate
from infratool.tasks.secureboot.report import HostReport, unreachable

__all__ = [
    "CONFIRM_PREFIX",
    "Backup",
    "CheckBackup",
    "CreateKeys",
    "Enroll",
    "HostReport",
    "Lanzaboote",
    "Migrate",
    "Restore",
    "Status",
    "confirmation",
    "render_flake_input",
    "render_module",
    "unreachable",
]
