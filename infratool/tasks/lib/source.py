"""File content rendered from a local file, read in chunks: hashed and sent, never held whole.

A ``files.content`` template (``$host``, ``$address``, ``$user``) or verbatim
``source`` can be large (an 86 MB data file once cost the controller 2.6 GB
of RSS: issue 19 §3). :class:`LocalSource` renders it block by block: the
plan reads it once to hash it (:meth:`LocalSource.survey`), the apply reads
it again while it is sent (:meth:`LocalSource.chunks`, checked against that
hash by :class:`infratool.remote.writes.Payload`).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

from infratool.diffs import DIFF_MAX_LINES
from infratool.errors import InputError
from infratool.remote.writes import CHUNK

STREAM_ABOVE = 256 * 1024
"""Sources larger than this (bytes on disk) are streamed; smaller ones are read whole,
so their plan shows a full diff and later tasks in the run see their content."""


@dataclass(frozen=True)
class Survey:
    """What the plan keeps of a source's rendered content: its size, hash and first lines."""

    size: int
    sha256: str
    lines: int
    head: list[str] = field(repr=False)


@dataclass(frozen=True)
class LocalSource:
    """A local file, copied verbatim (``variables`` None) or rendered as a template."""

    path: str
    """Absolute path on the controller."""
    variables: dict[str, str] | None = None
    """``string.Template`` substitutions (``safe_substitute``); None: bytes as they are."""

    def chunks(self) -> Iterator[bytes]:
        """The rendered content, in chunks of about :data:`CHUNK` bytes."""
        if self.variables is None:
            with open(self.path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            return
        # Placeholders ($name, ${name}) never span a newline, so substituting
        # a block of whole lines gives what substituting the whole text would.
        with open(self.path, encoding="utf-8") as f:
            try:
                while block := f.read(CHUNK):
                    if not block.endswith("\n"):
                        block += f.readline()
                    yield string.Template(block).safe_substitute(self.variables).encode()
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"template is not UTF-8 text ({exc.reason} at byte {exc.start})", self.path
                ) from None

    def read(self) -> bytes:
        """The whole rendered content (for small sources only)."""
        return b"".join(self.chunks())

    def survey(self) -> Survey:
        """One pass over the rendered content: size, sha256, line count and the first lines."""
        digest = hashlib.sha256()
        size = lines = 0
        head: list[str] = []
        last = b"\n"
        for chunk in self.chunks():
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            # The first lines, from the first chunk or two only: a file with
            # no newline (a binary) must not pile up in the head.
            if len(head) <= DIFF_MAX_LINES and size <= 2 * CHUNK:
                head.extend(chunk.decode(errors="replace").splitlines(keepends=True)[: DIFF_MAX_LINES + 1])
            last = chunk[-1:]
        if last != b"\n":
            lines += 1  # a last line without a newline
        return Survey(size, digest.hexdigest(), lines, _whole_lines(head)[:DIFF_MAX_LINES])


def _whole_lines(head: list[str]) -> list[str]:
    """``head`` with a line split across two chunks joined again."""
    out: list[str] = []
    for piece in head:
        if out and not out[-1].endswith("\n"):
            out[-1] += piece
        else:
            out.append(piece)
    return out
