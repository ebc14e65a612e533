"""Local files safely: open what someone may have planted; write atomically.

:func:`atomic_write` is the one way infratool replaces a local file (sops
files, the rotation state, generated repo files, timer units).

Opening a file that someone else may have planted: no symlinks, regular files only.

Lock files and the audit log live in places a repo writer or another local
user may control (the fleet repo, ``--audit-log PATH``). Following a
symlink there lets a committed ``.x.lock -> /etc/shadow`` truncate any file
root can write, and a FIFO hangs the run. The kernel's own answer is
``O_NOFOLLOW`` plus an ``fstat`` of the descriptor actually opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infratool.errors import InputError


def open_regular(path: Path, flags: int, mode: int, what: str) -> int:
    """Open ``path`` without following a symlink, and only if it is a regular file.

    ``flags`` are ``os.open`` flags; ``O_NOFOLLOW``, ``O_NONBLOCK`` (a FIFO
    must not hang the open) and ``O_CLOEXEC`` are added. A symlink, FIFO,
    device or directory is an :class:`InputError` naming the path: it was
    put there by someone, and nothing has been touched yet.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{what} {path} is a symlink: refusing to follow it") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise InputError(f"{what} {path} is not a regular file") from None
        raise InputError(f"cannot open {what} {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(f"{what} {path} is not a regular file")
    # Back to blocking I/O for the regular file we now know it is.
    os.set_blocking(fd, True)
    return fd


def atomic_write(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so a crash or power cut leaves the old file or the new one.

    A temp file in the same directory (created 0600, so a secret never has
    a wider mode than asked), written, fsynced, renamed over ``path``; the
    directory is fsynced too, so the rename itself survives a power cut.
    Parent directories are created. ``mode``: the file's mode; ``None`` keeps
    an existing file's mode (``0644`` for a new one). An existing file's
    owner is kept when we may set it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = None
    try:
        st = path.stat()
        owner = (st.st_uid, st.st_gid)
        if mode is None:
            mode = st.st_mode & 0o7777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o644 if mode is None else mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), *owner)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def edited_copy(path: str | Path) -> Iterator[str]:
    """A copy of ``path`` beside it for a tool to edit in place (``sops set``, ``sops rotate``).

    The copy keeps the file's mode and, when we may set it, its owner. When
    the block ends without an error the copy is fsynced and renamed over
    ``path`` (then the directory is fsynced), as :func:`atomic_write` does;
    otherwise it is removed and ``path`` is untouched.
    """
    path = Path(path)
    st = path.stat()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(path.read_bytes())
            os.fchmod(fh.fileno(), st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory, so a rename into it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
