"""Plan diffs bounded by the screen, not by the file: the first lines, then a count.

A plan is printed, logged and saved; a diff the size of an 86 MB file helps
nobody and once cost the controller gigabytes (issue 19 §3). Every diff a task
makes goes through :func:`text_diff` (content held in memory; also exported
as ``infratool.changes.text_diff``) or :func:`head_diff` (content streamed
from a source), so each one stops after :data:`DIFF_MAX_LINES` lines with the
same "… N more lines, diff too large". Secret content is never diffed, and
everything shown passes through the redactor.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from infratool.secrets.secret import REDACTOR

SECRET_DIFF = "(secret content: not shown)"

DIFF_MAX_LINES = 300
"""Lines of a diff shown before "… N more lines, diff too large"."""
DIFF_MAX_INPUT = 1024 * 1024
"""Characters per side above which no line-by-line diff is computed (difflib's cost grows with both)."""


def too_large(more: int) -> str:
    """The line that ends a capped diff."""
    return f"… {more} more line{'s' if more != 1 else ''}, diff too large"


def cap_lines(diff: str, max_lines: int = DIFF_MAX_LINES) -> str:
    """``diff`` cut after ``max_lines`` lines, saying how many were left out."""
    lines = diff.split("\n")
    if len(lines) <= max_lines:
        return diff
    return "\n".join([*lines[:max_lines], too_large(len(lines) - max_lines)])


def text_diff(old: str | None, new: str | None, path: str, secret: bool = False) -> str:
    """A unified diff of a file's content (``None``: absent), capped at :data:`DIFF_MAX_LINES` lines.

    Secret content is never diffed: even a one-line diff would print the
    value. Past :data:`DIFF_MAX_INPUT` characters on either side no diff is
    computed: a new file shows its first lines, a changed one its sizes. The
    result is run through the redactor in any case.
    """
    small = len(old or "") <= DIFF_MAX_INPUT and len(new or "") <= DIFF_MAX_INPUT
    if secret or small:
        return cap_lines(_unified(old, new, path, secret))
    if old is None and new is not None:
        head = new[:DIFF_MAX_INPUT].splitlines(keepends=True)[:DIFF_MAX_LINES]
        return head_diff(path, head, new.count("\n") + (not new.endswith("\n")))
    return f"--- {path}\n+++ {path}\n{size_line(len((old or '').encode()), len((new or '').encode()))}"


def _unified(old: str | None, new: str | None, path: str, secret: bool) -> str:
    """The whole unified diff (uncapped: callers cap it), or the placeholder for secret content."""
    if secret:
        if old is None:
            return f"+++ {path}\n{SECRET_DIFF}"
        return f"--- {path}\n+++ {path}\n{SECRET_DIFF}"
    a = [] if old is None else old.splitlines(keepends=True)
    b = [] if new is None else new.splitlines(keepends=True)
    lines = difflib.unified_diff(
        a, b, fromfile="/dev/null" if old is None else path, tofile="/dev/null" if new is None else path
    )
    out = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    return REDACTOR.redact(out.rstrip("\n"))


def size_line(old_size: int | None, new_size: int) -> str:
    """The placeholder for a change too large to diff."""
    before = "absent" if old_size is None else f"{old_size} bytes"
    return f"(content {before} → {new_size} bytes, diff too large)"


def head_diff(path: str, head: Sequence[str], total_lines: int) -> str:
    """A new file's diff from its first lines only (``head``) and its line count."""
    if any("\0" in line for line in head):
        return f"--- /dev/null\n+++ {path}\n(binary content, {total_lines} lines: not shown)"
    shown = [f"+{_clip(line.rstrip(chr(10)))}" for line in head[:DIFF_MAX_LINES]]
    out = ["--- /dev/null", f"+++ {path}", f"@@ -0,0 +1,{total_lines} @@", *shown]
    if total_lines > len(shown):
        out.append(too_large(total_lines - len(shown)))
    return REDACTOR.redact("\n".join(out))


_MAX_WIDTH = 1000


def _clip(line: str) -> str:
    """A line of a head diff, cut at :data:`_MAX_WIDTH` characters."""
    return (
        line
        if len(line) <= _MAX_WIDTH
        else f"{line[:_MAX_WIDTH]}… ({len(line) - _MAX_WIDTH} more characters)"
    )
