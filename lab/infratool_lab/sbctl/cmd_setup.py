"""``sbctl setup`` (cmd/sbctl/setup.go): only ``--migrate`` is emulated.

``--migrate`` moves a legacy installation (everything in sbctl.DatabasePath:
``/usr/share/secureboot/`` upstream, ``/etc/secureboot`` in nixpkgs) to
``/var/lib/sbctl``: it copies the directory (file modes kept), renames
``files.db``/``bundles.db`` to ``.json`` and deletes the old directory. It
does nothing when ``/var/lib/sbctl/keys`` exists already, even if the old
directory still holds (other) keys, which keeps sbctl in legacy mode.
"""

from __future__ import annotations

import os
import posixpath
import shutil

from .consts import DEFAULT_DIR
from .output import _Fail, _os_error
from .runtime import Opts, _Ctx

_GROUP = ("print-config", "print-state", "migrate", "setup")


def _cmd_setup(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    chosen = [f for f in _GROUP if opts.get(f)]
    # cobra's ValidateFlagGroups (MarkFlagsOneRequired / MarkFlagsMutuallyExclusive).
    if not chosen:
        raise _Fail(f"at least one of the flags in the group [{' '.join(_GROUP)}] is required")
    if len(chosen) > 1:
        raise _Fail(
            f"if any flags in the group [{' '.join(_GROUP)}] are set none of the others can be; "
            f"[{' '.join(sorted(chosen))}] were all set"
        )
    if chosen != ["migrate"]:
        raise _Fail(f"sbctl emulator: setup --{chosen[0]} is not emulated")
    _migrate(ctx)


def _migrate(ctx: _Ctx) -> None:
    """setup.go MigrateSetup."""
    log = ctx.log
    if not os.path.exists(ctx.config.keydir):  # state.IsInstalled
        raise _Fail("sbctl is not installed")
    new_keydir = ctx.sys(posixpath.join(DEFAULT_DIR, "keys"))
    if os.path.isdir(new_keydir):
        log.println("sbctl has already been migrated!")
        return
    target = ctx.sys(DEFAULT_DIR)
    os.makedirs(target, exist_ok=True)
    if ctx.database_path == DEFAULT_DIR:
        log.println("Nothing to be done!")
        return
    log.print("Moving files...")
    source = ctx.sys(ctx.database_path).rstrip("/")
    try:
        _copy_directory(source, target)
    except OSError as exc:
        log.notok("")
        raise _Fail(_os_error("open", ctx.show(str(exc.filename or source)), exc)) from exc
    for old, new in (("files.db", "files.json"), ("bundles.db", "bundles.json")):
        src, dst = posixpath.join(target, old), posixpath.join(target, new)
        if old == "bundles.db" and not os.path.exists(src):
            continue
        try:
            os.rename(src, dst)
        except OSError as exc:
            reason = os.strerror(exc.errno or 0).lower()
            raise _Fail(f"rename {ctx.show(src)} {ctx.show(dst)}: {reason}") from exc
    log.ok("")
    # os.RemoveAll. In the lab /etc/secureboot is a symlink to a host-private
    # directory (install.etc_secureboot): removing the target is what the host
    # sees as the directory gone, and leaves the other hosts' view alone.
    shutil.rmtree(os.path.realpath(source))


def _copy_directory(src: str, dst: str) -> None:
    """util.go CopyDirectory: directories made with the source's mode, files copied and chmod'ed."""
    for here, _dirs, files in os.walk(src):
        rel = os.path.relpath(here, src)
        out = dst if rel == "." else os.path.join(dst, rel)
        os.makedirs(out, mode=os.stat(here).st_mode & 0o7777, exist_ok=True)
        for name in sorted(files):
            path = os.path.join(here, name)
            with open(path, "rb") as handle:
                data = handle.read()
            target = os.path.join(out, name)
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(target, os.stat(path).st_mode & 0o7777)
