"""Moving key files between a host and the controller's memory, and proving them bit-for-bit.

Reading (for a backup) runs one command that prints each file's metadata and
its bytes hex-encoded; the bytes are wrapped in :class:`Secret` the moment
they are decoded, so the redactor knows every private key (and its PEM
lines) before anything could print it. The hex text itself is never shown or
logged, and it is not registered: registering it would make the remote layer
mask the next identical read.

Writing (for a restore) goes through :meth:`HostContext.put_file`: content on
stdin, a 0600 temp file in the target directory, mode/owner set, renamed into
place. Either way the result is checked with ``sha256sum`` on the host.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass

from infratool.context import HostContext
from infratool.errors import CommandFailed, VerifyError
from infratool.secrets.secret import Secret
from infratool.tasks.secureboot.hostinfo import BUNDLE_FILES

_READ_SCRIPT = r"""
set -e
cd {dir}
for f in {files}; do
  [ -f "$f" ] || continue
  printf 'F\t%s\t%s\n' "$(stat -c '%a %U %G' -- "$f")" "$f"
  od -An -v -tx1 -- "$f" | tr -d ' \n'
  echo
done
"""


@dataclass(frozen=True)
class FileData:
    """One key-bundle file in memory: where it goes, its metadata and its bytes."""

    path: str
    """Relative to the bundle directory."""
    mode: int
    owner: str
    group: str
    content: Secret | bytes
    """Private keys as :class:`Secret`; certificates and the GUID as plain bytes."""

    @property
    def raw(self) -> bytes:
        """The bytes (unwrapped: only for hashing, base64 into sops, or stdin)."""
        return self.content.reveal_bytes() if isinstance(self.content, Secret) else self.content

    @property
    def sha256(self) -> str:
        """SHA-256 of the content, hex."""
        return hashlib.sha256(self.raw).hexdigest()


def is_private(path: str, data: bytes) -> bool:
    """Whether a bundle file holds private key material (``*.key`` or a PEM private key)."""
    return path.endswith(".key") or b"PRIVATE KEY" in data


def wrap(path: str, data: bytes) -> Secret | bytes:
    """``data`` as it must be held in memory: private material as a Secret."""
    return Secret(data) if is_private(path, data) else data


def read_bundle(host: HostContext, directory: str) -> dict[str, FileData]:
    """The bundle's files at ``directory`` (``GUID`` and the six key files), read in one command."""
    script = _READ_SCRIPT.format(dir=shlex.quote(directory), files=" ".join(sorted(BUNDLE_FILES)))
    res = host.run(script, what=f"read keys in {directory}")
    files: dict[str, FileData] = {}
    lines = res.stdout.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("F\t"):
            i += 1
            continue
        _, meta, path = line.split("\t", 2)
        mode, owner, group = meta.split()
        try:
            data = bytes.fromhex(lines[i + 1])
        except (IndexError, ValueError):
            raise CommandFailed(host.name, f"read {directory}/{path}", 0, "unreadable output") from None
        files[path] = FileData(path, int(mode, 8), owner, group, wrap(path, data))
        del data
        i += 2
    del res, lines
    return files


def host_hashes(host: HostContext, directory: str, paths: list[str]) -> dict[str, str]:
    """SHA-256 of each of ``paths`` (relative to ``directory``) on the host; absent files are left out."""
    if not paths:
        return {}
    quoted = " ".join(shlex.quote(p) for p in paths)
    res = host.run(
        f"cd {shlex.quote(directory)} 2>/dev/null || exit 0; for f in {quoted}; do "
        '[ -f "$f" ] && printf \'%s\\t%s\\n\' "$(sha256sum < "$f" | cut -d" " -f1)" "$f"; done; true',
        what=f"hash keys in {directory}",
    )
    found = {}
    for line in res.stdout.splitlines():
        digest, _, path = line.partition("\t")
        if path:
            found[path] = digest
    return found


def write_bundle(host: HostContext, directory: str, files: list[FileData]) -> None:
    """Write ``files`` under ``directory`` (atomic, exact mode, root-owned) and prove them bit-for-bit.

    Missing directories are created 0700: they hold private keys.
    """
    dirs = sorted({posixpath.dirname(posixpath.join(directory, f.path)) for f in files})
    needed = []
    for d in dirs:
        parts = d.split("/")
        needed += ["/".join(parts[:n]) for n in range(2, len(parts) + 1)]
    mkdirs = " ".join(shlex.quote(d) for d in dict.fromkeys(needed))
    host.run(
        f'for d in {mkdirs}; do [ -d "$d" ] || mkdir -m 0700 -- "$d"; done',
        what=f"create {directory}",
    )
    for f in files:
        host.put_file(posixpath.join(directory, f.path), f.content, mode=f.mode, owner="root", group="root")
    check_hashes(host, directory, {f.path: f.sha256 for f in files})


def check_hashes(host: HostContext, directory: str, expected: dict[str, str]) -> None:
    """Raise VerifyError unless every file under ``directory`` has exactly the expected SHA-256."""
    try:
        found = host_hashes(host, directory, sorted(expected))
    except CommandFailed as exc:
        raise VerifyError(f"{host.name}: cannot hash the keys in {directory}: {exc}") from None
    wrong = [p for p, digest in expected.items() if found.get(p) != digest]
    if wrong:
        raise VerifyError(
            f"{host.name}: {directory}: {', '.join(wrong)} differ from the backup after writing "
            "(not bit-for-bit)"
        )
