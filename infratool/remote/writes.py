"""The put-files protocol: several files written atomically in one round trip.

:meth:`infratool.remote.Remote.put_files` runs :func:`put_files_script` with
:class:`Payload` on its stdin. The script needs only sh and coreutils on the
host; the guarantees it keeps are listed in docs/security.md ("Remote
writes"): a fresh root-only temp directory next to the destination, no
symlink followed on the way there, ``mv -T`` over the destination, and the
``expect`` check that refuses a stale plan.

Contents travel raw on stdin, each followed by a newline the script must read
before the rename, so a stream cut short never replaces a file. Content may
be bytes in memory or :class:`StreamedContent`, read from a local source in
chunks while it is sent and checked against the hash the plan computed: the
controller never holds a large file whole.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from infratool.errors import CommandFailed, InfratoolError
from infratool.secrets.secret import Secret

CHUNK = 256 * 1024
"""Bytes read from a source, and sent to the channel, at a time."""


@dataclass(frozen=True)
class StreamedContent:
    """File content produced in chunks while it is sent, never held whole.

    ``chunks`` opens the source anew each time it is called (a saved plan is
    applied by a fresh process). ``size`` and ``sha256`` are what the plan
    computed: the bytes sent are hashed on the way, and a source that no
    longer yields exactly them is refused before the rename (see
    :class:`Payload`).
    """

    size: int
    sha256: str
    chunks: Callable[[], Iterable[bytes]] = field(repr=False, compare=False)
    label: str = ""
    """What the source is, for errors (``template site/big.txt``)."""


@dataclass(frozen=True)
class FileWrite:
    """One file for :meth:`Remote.put_files`."""

    path: str
    content: bytes | str | Secret | StreamedContent = field(repr=False)
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    expect: str | None = None
    """What the plan saw at ``path`` (see :func:`expected_state`); the write is
    refused when the host has something else there now. None: no check."""


def expected_state(
    exists: bool, is_file: bool = True, is_symlink: bool = False, sha256: str | None = None
) -> str:
    """The token the write script compares with what is at the path now.

    ``A`` absent, ``L`` a symlink, ``O`` another non-regular file, else the
    regular file's sha256; ``-`` (no check) when the plan did not know the hash.
    """
    if not exists:
        return "A"
    if is_symlink:
        return "L"
    if not is_file:
        return "O"
    return sha256 or "-"


class PartialWrite(CommandFailed):
    """:meth:`Remote.put_files` stopped at a file; ``written`` files before it are in place."""

    def __init__(self, host: str, what: str, exited: int, stderr: str, written: int) -> None:
        self.written = written
        super().__init__(host, what, exited, stderr)


def _in_memory(content: bytes | str | Secret) -> bytes:
    data = content.reveal_bytes() if isinstance(content, Secret) else content
    return data.encode() if isinstance(data, str) else data


def payload_sizes(writes: Sequence[FileWrite]) -> list[int]:
    """Byte length of each write's content (as sent)."""
    return [
        w.content.size if isinstance(w.content, StreamedContent) else len(_in_memory(w.content))
        for w in writes
    ]


class Payload:
    """The stdin of one put-files script, produced while it is sent.

    Each write's bytes, then its end line: an empty line lets the script
    rename the file into place; anything else (``!``) makes it refuse. A
    streamed source is read in chunks of :data:`CHUNK` bytes and hashed on
    the way; when it does not yield exactly the ``size`` bytes of the
    ``sha256`` the plan computed (the file changed since, or cannot be
    read), the write is refused that way and :attr:`problem` says why.
    Small writes are coalesced so that a converge of small files still goes
    out in one packet train.
    """

    def __init__(self, writes: Sequence[FileWrite]) -> None:
        self.writes = writes
        self.problem: tuple[int, str] | None = None
        """(index of the write, reason) when a streamed source was refused."""

    def __iter__(self) -> Iterator[bytes]:
        pending = bytearray()
        for index, w in enumerate(self.writes):
            if not isinstance(w.content, StreamedContent):
                pending += _in_memory(w.content) + b"\n"
                if len(pending) >= CHUNK:
                    yield bytes(pending)
                    pending.clear()
                continue
            if pending:
                yield bytes(pending)
                pending.clear()
            ok = yield from self._stream(index, w.content)
            yield b"\n" if ok else b"!\n"
            if not ok:
                return  # the script stops at this write: nothing after it is read
        if pending:
            yield bytes(pending)

    def _stream(self, index: int, content: StreamedContent) -> Iterator[bytes]:
        """Exactly ``content.size`` bytes; returns whether they hash to ``content.sha256``."""
        digest = hashlib.sha256()
        left = content.size
        try:
            for chunk in content.chunks():
                if len(chunk) > left:
                    self.problem = (index, f"{content.label} changed since the plan read it (larger)")
                    chunk = chunk[:left]
                digest.update(chunk)
                left -= len(chunk)
                if chunk:
                    yield chunk
                if left == 0 or self.problem:
                    break
        except (OSError, ValueError, InfratoolError) as exc:  # a template that is not UTF-8, say
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.problem = (index, f"cannot read {content.label}: {reason}")
        if left:
            # The script reads exactly `size` bytes: pad, then refuse with the end line.
            self.problem = self.problem or (
                index,
                f"{content.label} changed since the plan read it (smaller)",
            )
            while left:
                n = min(left, CHUNK)
                yield bytes(n)
                left -= n
        if not self.problem and digest.hexdigest() != content.sha256:
            self.problem = (index, f"{content.label} changed since the plan read it (sha256 differs)")
        return self.problem is None


_WALK_FUNCTION = r"""err() { echo "infratool: $p: $*" >&2; exit 1; }
walk() {  # cd into the directory of $p; sets n (the file name) and r (the directory)
  n=${p##*/} r= CDPATH=
  case $p in /*) ;; *) err "not an absolute path" ;; esac
  case $n in ''|.|..) err "not a file name" ;; esac
  # From / one name at a time, never through a symlink: after each cd -P,
  # $PWD is the physical path, so a component that is (or was just swapped
  # for) a symlink shows as a mismatch.
  cd -P /
  rest=${p%/*}
  rest=${rest#/}
  while [ -n "$rest" ]; do
    c=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    case $c in ''|.) continue ;; esac
    r=$r/$c
    [ ! -L "$c" ] || err "refusing to write through a symlink: $r is a symlink"
    [ -d "$c" ] || mkdir -m 755 -- "$c" 2>/dev/null || [ -d "$c" ] || err "cannot create directory $r"
    cd -P -- "$c"
    [ "$PWD" = "${r:-/}" ] || err "refusing to write through a symlink: $r resolves to $PWD"
  done
}
private_dir() {  # make and enter a fresh root-only directory here; sets t and i
  t=$(mktemp -d -- .infratool.XXXXXXXX)
  cd -P -- "$t"
  i=1
  [ "$PWD" = "$r/$t" ] || err "temp directory $r/$t was swapped"
  case $(stat -c %u:%a .) in 0:700|0:2700) ;; *) err "temp directory $r/$t was swapped" ;; esac
}
cleanup() {  # f: a temp file may exist; i: we are inside the temp directory t
  [ -z "$f" ] || rm -f -- f
  [ -z "$i" ] || cd ..
  [ -z "$t" ] || rmdir -- "$t" 2>/dev/null || :
}"""

_PUT_FUNCTION = r"""NL='
'
get() {  # exactly $1 bytes of stdin into f, fsynced before it can be renamed into place
  # GNU dd with count_bytes never reads past its count (the next file's
  # content stays on stdin) and, with conv=fsync, spares a `sync` process.
  dd bs=65536 count="$1" iflag=count_bytes,fullblock of=f conv=fsync status=none
}
g() {  # path: enter its directory, then a fresh root-only temp directory there
  # One temp directory serves every write to the same directory in a row
  # (a mktemp, a stat and an rmdir per directory, not per file).
  set -e
  p=$1 t= f= i=
  walk
  # The temp file lives in a directory of its own that only root can enter,
  # so the directory's owner can rename that directory but never swap a name
  # inside it: every step below works on names only root controls, and the
  # rename into place (relative to the temp directory's parent, which its
  # owner cannot change) replaces the destination without following it.
  trap cleanup EXIT
  private_dir
}
w() {  # path size mode|- owner|- expect|-   (inside g's temp directory)
  p=$1 n=${1##*/}
  case $n in ''|.|..) err "not a file name" ;; esac
  [ ! -d "../$n" ] || [ -L "../$n" ] || err "is a directory, not a file: nothing written"
  # What is at the destination now (a regular file's mode and owner are kept
  # when none is given; stat does not follow a symlink there). Not asked when
  # the plan saw nothing there: the expect check below refuses anything new.
  ref=
  if [ "$5" != A ]; then
    ref=$(stat -c '%a %u:%g %F' -- "../$n" 2>/dev/null) || :
    case $ref in *" regular file"|*" regular empty file") set -- "$@" $ref ;; *) ref= ;; esac
  fi
  if [ "$3" != - ]; then m=$3; elif [ -n "$ref" ]; then m=$6; else m=644; fi
  f=1
  # A mode of read/write bits only is given at creation by the umask
  # (0666 & ~umask), saving a chmod; any other is set by chmod.
  case $m in
    [0246][0246][0246]) x=${m#?}; umask "$((7 - ${m%??}))$((7 - ${x%?}))$((7 - ${m#??}))"; get "$2" ;;
    *) umask 077; get "$2"; chmod "$m" f ;;
  esac
  IFS= read -r end
  [ -z "$end" ] || err "content cut short: nothing written"
  if [ "$4" != - ]; then chown -h -- "$4" f
  elif [ -n "$ref" ] && { [ "$7" != 0:0 ] || [ -g .. ]; }; then chown -h -- "$7" f; fi
  if [ "$5" != - ]; then
    if [ -L "../$n" ]; then now=L
    elif [ -f "../$n" ]; then now=$(sha256sum < "../$n"); now=${now%% *}
    elif [ -e "../$n" ]; then now=O
    else now=A; fi
    [ "$now" = "$5" ] || err "changed on the host since the plan read it (stale plan): not written; plan again"
  fi
  mv -T -- f "../$n"
  f=
}"""


_META_FUNCTION = r"""m() {  # path mode|- owner|-
  set -e
  p=$1 t= f= i=
  walk
  trap cleanup EXIT
  private_dir
  f=1
  # A second name for the file, in a directory only root controls: whatever
  # is swapped in at the path afterwards, chmod and chown act on this inode.
  # A symlink (ln -P links the link itself) or a file with other hard links
  # (say, a link to /etc/shadow) is refused.
  ln -P -- "../$n" f || err "cannot change mode/owner: not a file"
  [ -f f ] && [ ! -L f ] || err "is not a regular file (a symlink?): mode/owner not changed"
  [ "$(stat -c %h f)" = 2 ] || err "has other hard links: mode/owner not changed"
  [ "$2" = - ] || chmod "$2" f
  [ "$3" = - ] || chown -h -- "$3" f
}"""


def owner_spec(owner: str | None, group: str | None) -> str:
    """``owner:group`` as chown takes it (``-``: keep both)."""
    if not (owner or group):
        return "-"
    return f"{owner or ''}:{group}" if group else owner or ""


def set_meta_script(path: str, mode: int | None, owner: str | None, group: str | None) -> str:
    """The script :meth:`Remote.set_meta` runs."""
    mode_arg = "-" if mode is None else f"{mode:o}"
    call = f"( m {shlex.quote(path)} {mode_arg} {shlex.quote(owner_spec(owner, group))} )"
    return "\n".join([_WALK_FUNCTION, _META_FUNCTION, call])


def put_files_script(writes: Sequence[FileWrite], sizes: Sequence[int]) -> str:
    """The script :meth:`Remote.put_files` runs: a subshell per directory in a row, "ok" after each file.

    Consecutive writes to the same directory share a subshell and its temp
    directory; each subshell has its own ``set -e`` and temp-directory trap.
    GNU ``dd`` with ``iflag=count_bytes`` never reads past its count, so the
    next file's content stays on stdin.
    """
    lines = [_WALK_FUNCTION, _PUT_FUNCTION]
    # Not `( ... ) || exit`: inside an || list the shell ignores `set -e`.
    close = ' ); s=$?\n[ "$s" = 0 ] || exit "$s"'
    group: str | None = None
    for w, size in zip(writes, sizes, strict=True):
        mode = "-" if w.mode is None else f"{w.mode:o}"
        owner = owner_spec(w.owner, w.group)
        expect = shlex.quote(w.expect or "-")
        # A relative path goes alone (walk refuses it): "" never matches.
        directory = w.path.rpartition("/")[0] if w.path.startswith("/") else ""
        if group is None or not directory or directory != group:
            if group is not None:
                lines.append(close)
            lines.append(f"( g {shlex.quote(w.path)}")
        group = directory
        lines.append(f"w {shlex.quote(w.path)} {size} {mode} {shlex.quote(owner)} {expect}; echo ok")
    if group is not None:
        lines.append(close)
    return "\n".join(lines)
