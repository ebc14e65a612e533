"""Remote file writes that a dying controller cannot truncate.

``Remote.put_file`` renames whatever arrived on stdin into place. If the
controller is killed after the remote command started but before the content
was sent, the remote side sees an empty stdin and installs an *empty* file —
an empty signing key, or a client that suddenly trusts no key, in the middle
of a rotation. Here the content is followed by an end marker, and the file is
renamed into place only if the marker arrived: a cut transfer leaves the old
file untouched. (Reported to the engine's owner; once ``put_file`` checks
completeness itself, :func:`file_changes` can call it directly.)
"""

from __future__ import annotations

import base64
import shlex

from infratool.changes import Change
from infratool.context import HostContext
from infratool.hidden import Secret
from infratool.tasks import files

END = "@@infratool-end-of-content@@"


def checked_put_script(path: str, mode: int, owner: str | None, group: str | None) -> str:
    """Shell that installs stdin's base64 content at ``path`` only if it ends with :data:`END`."""
    q = shlex.quote(path)
    lines = [
        "set -e",
        "umask 077",  # the temp files may hold a secret
        f"p={q}",
        'd=$(dirname -- "$p")',
        'mkdir -p -- "$d"',
        't=$(mktemp -- "$d/.infratool.XXXXXXXX")',
        'trap \'rm -f -- "$t" "$t.in"\' EXIT',
        'cat > "$t.in"',
        f'[ "$(tail -n 1 "$t.in")" = {END} ] || {{ echo "incomplete transfer: {path} left as it was" >&2; exit 1; }}',
        'sed \'$d\' "$t.in" | base64 -d > "$t"',
        f'chmod {mode:o} "$t"',
    ]
    if owner or group:
        spec = f"{owner or ''}:{group or ''}" if group else owner or ""
        lines.append(f'chown {shlex.quote(spec)} "$t"')
    else:
        lines.append('if [ -e "$p" ]; then chown --reference="$p" "$t"; fi')
    lines += ['sync -- "$t" 2>/dev/null || true', 'mv -f -- "$t" "$p"']
    return "\n".join(lines)


def put_checked(
    hctx: HostContext, path: str, content: bytes | Secret, mode: int, owner: str | None, group: str | None
) -> None:
    """Write ``content`` to ``path`` atomically; a cut transfer changes nothing."""
    data = content.reveal_bytes() if isinstance(content, Secret) else content
    payload = base64.b64encode(data) + f"\n{END}\n".encode()
    hctx.run(checked_put_script(path, mode, owner, group), stdin=payload, what=f"write {path}")


def file_changes(
    hctx: HostContext,
    task: str,
    path: str,
    content: bytes | Secret,
    mode: int | None,
    owner: str | None = None,
    group: str | None = None,
    secret: bool = False,
) -> list[Change]:
    """:func:`infratool.tasks.files.file_changes`, with content written by :func:`put_checked`."""
    before = hctx.file(path)
    changes = files.file_changes(hctx, task, path, content, mode, owner, group, secret=secret)
    final_mode = (
        mode if mode is not None else (before.mode if before.exists and before.mode is not None else 0o644)
    )
    for c in changes:
        if c.diff:  # a content write (metadata-only changes have no diff)
            c.apply = lambda h, content=content: put_checked(h, path, content, final_mode, owner, group)
    return changes
