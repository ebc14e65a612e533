"""``secureboot.migrate``: ``sbctl setup --migrate`` on hosts whose sbctl still uses ``/etc/secureboot``.

nixpkgs' sbctl uses ``/etc/secureboot`` while that directory exists and says
"old configuration detected. Please use `sbctl setup --migrate`" on every
run. The migration copies the directory to ``/var/lib/sbctl`` (modes kept),
renames ``files.db`` to ``files.json`` and deletes ``/etc/secureboot``; what
depends on the old path must follow: the backup manifest's ``bundle`` and
lanzaboote's ``pkiBundle``. ``infratool secureboot migrate`` therefore
replans ``secureboot.backup`` and ``secureboot.lanzaboote`` right after it and
shows that plan.

Guards: the keys in ``/etc/secureboot`` must have a verified backup (the
migration deletes the directory), and ``/var/lib/sbctl`` must hold no key
files (sbctl then only says "sbctl has already been migrated!" and stays on
``/etc/secureboot``).
"""

from __future__ import annotations

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import RefusedError, VerifyError
from infratool.tasks.base import PlanContext, register
from infratool.tasks.secureboot import backupfile
from infratool.tasks.secureboot.common import SecureBootTask, require_sbctl
from infratool.tasks.secureboot.hostinfo import LEGACY_DIR, SBCTL_DIR
from infratool.tasks.secureboot.keyfiles import host_hashes
from infratool.tasks.secureboot.keytasks import backup_problems

COMMAND = "sbctl setup --migrate"


@register
class Migrate(SecureBootTask):
    """Move keys from /etc/secureboot to /var/lib/sbctl with sbctl's own migration."""

    name = "secureboot.migrate"
    summary = "sbctl setup --migrate where nixpkgs' sbctl still uses /etc/secureboot (backup required)"
    params = {}

    def changes_for(self, host: HostContext, ctx: PlanContext) -> list[Change]:
        view = self.view(host)
        require_sbctl(view)
        if not view.sbctl.legacy or view.sbctl_dir != LEGACY_DIR:
            return []  # sbctl does not use /etc/secureboot: nothing to migrate
        target = view.bundles.get(SBCTL_DIR)
        if target is not None and target.files:
            raise RefusedError(
                f"{SBCTL_DIR} already holds key files, so `{COMMAND}` would only say 'sbctl has already "
                f"been migrated!' and sbctl would stay on {LEGACY_DIR}: keep the right set and move the "
                "other aside"
            )
        source = view.bundles[LEGACY_DIR]
        if not source.complete:
            raise RefusedError(f"{LEGACY_DIR} holds no complete key set to migrate")
        problem = backup_problems(view, ctx, LEGACY_DIR)
        if problem:
            raise RefusedError(
                f"migration deletes {LEGACY_DIR}, so it needs a verified backup first: {problem}"
            )
        expected = source.hashes()
        lines = [
            f"~ {LEGACY_DIR}/{p} → {SBCTL_DIR}/{p}  sha256:{backupfile.short(d)}"
            for p, d in sorted(expected.items())
        ]
        lines += [
            f"- {LEGACY_DIR} (deleted by sbctl after copying; files.db becomes files.json)",
            "Then the backup manifest and lanzaboote's pkiBundle must follow: `infratool secureboot migrate` "
            "replans them and shows it.",
        ]
        return [
            Change(
                host.name,
                self.name,
                f"move Secure Boot keys {LEGACY_DIR} → {SBCTL_DIR}: `{COMMAND}`",
                op="secureboot.migrate",
                args={"expected": expected},
                diff="\n".join(lines),
                action="update",
            )
        ]


@action("secureboot.migrate")
def migrate_keys(h: HostContext, expected: dict[str, str]) -> None:
    """``sbctl setup --migrate``, then prove the keys of the plan arrived in the new directory."""
    h.run(COMMAND, what=COMMAND)
    found = host_hashes(h, SBCTL_DIR, sorted(expected))
    if found != expected:
        raise VerifyError(f"after `{COMMAND}`, {SBCTL_DIR} does not hold the keys of {LEGACY_DIR}")
