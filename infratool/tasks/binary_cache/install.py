"""Remote file writes that a dying controller cannot truncate.

These once had their own write script (content followed by an end marker,
renamed into place only if the marker arrived), because ``Remote.put_file``
renamed whatever arrived. ``put_file`` now checks completeness itself (each
content is followed by a newline it must read before the rename) and is
safe against the owner of the target directory (issue 13 item 1), which the
old script, a ``mktemp`` file handled by name, was not. So both names below
are the engine's write.
"""

from __future__ import annotations

from infratool.changes import Change
from infratool.context import HostContext
from infratool.secrets.secret import Secret
from infratool.tasks.lib import files


def put_checked(
    hctx: HostContext, path: str, content: bytes | Secret, mode: int, owner: str | None, group: str | None
) -> None:
    """Write ``content`` to ``path`` atomically; a cut transfer changes nothing (the engine's write)."""
    hctx.put_file(path, content, mode=mode, owner=owner, group=group)


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
    """:func:`infratool.tasks.lib.files.file_changes` (kept for this package's callers)."""
    return files.file_changes(hctx, task, path, content, mode, owner, group, secret=secret)
