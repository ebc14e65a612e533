"""What the cache may sign: only paths the server can vouch for (issue 22.1).

A remote-builder client is a *trusted* Nix user of the builder, so it can
import any store path into the builder's store, under any name, without a
signature (``nix-store --import`` over ``ssh-ng://``). If the cache then signs
whatever the server's store holds, one client's forged path is signed with
the cache key and every host substitutes it.

So the cache signs a path only when the server itself vouches for it:

* Nix marks paths built on this host as *ultimately trusted* (``ultimate`` in
  ``nix path-info --json``); paths imported by a client are not;
* content-addressed paths prove themselves;
* a path already signed by a key the server trusts (its ``trusted-public-keys``,
  e.g. cache.nixos.org, or the cache's own key) is as good as that key.

``nix store verify --no-contents`` applies exactly these rules; everything it
calls "untrusted" is refused, together with every path that refers to it or was
built from it. Nothing here needs more than POSIX sh, coreutils and nix.
"""

from __future__ import annotations

import shlex

NIX = "nix --extra-experimental-features nix-command"


def untrusted_function(key_file: str, bindir: str = "") -> str:
    """Shell defining ``untrusted PATHS_FILE OUT_FILE``: write to OUT_FILE the paths we must not sign.

    Returns non-zero (and says why on stderr) when the check itself fails:
    callers then refuse everything (fail closed). The cache's own public key
    is derived from ``key_file`` (its last 32 bytes are the public key), so
    the check follows the key through rotations without being re-rendered;
    the secret goes through pipes only, never argv.
    """
    nix = f"{bindir}{NIX}"
    key = shlex.quote(key_file)
    return "\n".join(
        [
            "untrusted() {",
            f"  _keys=$({nix} show-config | sed -n 's/^trusted-public-keys = //p') || return 1",
            f"  _own=$(cut -d: -f1 < {key}):$(cut -d: -f2- < {key} | base64 -d | tail -c 32 | base64 -w0)"
            " || return 1",
            '  : > "$2"',
            '  [ -s "$1" ] || return 0',
            f'  xargs {nix} store verify --no-contents --trusted-public-keys "$_keys $_own" '
            '< "$1" >/dev/null 2> "$2.err" && return 0',
            '  sed -n "s/^path \'\\(.*\\)\' is untrusted\\$/\\1/p" "$2.err" | sort -u > "$2"',
            # A failure that names no untrusted path is the check failing: say so, refuse.
            '  [ -s "$2" ] || { cat "$2.err" >&2; return 1; }',
            "}",
        ]
    )


def reach_function(bindir: str = "") -> str:
    """Shell defining ``reach ROOTS_FILE OUT_FILE``: every path signing ROOTS would vouch for.

    That is each root's closure (``nix copy`` signs all of it) and, when the
    root's deriver is in this store, everything its build read
    (``--include-outputs``): a build that copied a forged input's content
    into its output does not refer to that input, but was made from it.
    """
    store = f"{bindir}nix-store"
    return "\n".join(
        [
            "reach() {",
            f'  xargs -r {store} --query --requisites < "$1" > "$2" || return 1',
            "  while read -r _r; do",
            f'    _d=$({store} --query --deriver "$_r" 2>/dev/null) || continue',
            f'    if {store} --check-validity "$_d" 2>/dev/null; then',
            f'      {store} --query --requisites --include-outputs "$_d" >> "$2" || return 1',
            "    fi",
            '  done < "$1"',
            '  sort -u -o "$2" "$2"',
            "}",
        ]
    )


def guard(key_file: str, roots: str, what: str, bindir: str = "") -> str:
    """Shell that exits 1, naming the culprits, unless every path ``roots`` (a file) reaches is trusted.

    Defines :func:`untrusted_function` and :func:`reach_function`; expects a
    scratch directory in ``$t``. ``what`` starts the refusal message.
    """
    return "\n".join(
        [
            untrusted_function(key_file, bindir),
            reach_function(bindir),
            f'reach {roots} "$t/reach" || {{ echo "cannot list what {what} would sign" >&2; exit 1; }}',
            'untrusted "$t/reach" "$t/bad" || { echo "cannot check who vouches for the paths" >&2; exit 1; }',
            'if [ -s "$t/bad" ]; then',
            f'  echo "REFUSED to sign {what}: it is built from or refers to path(s) neither built on this '
            'host nor signed by a trusted key:" $(cat "$t/bad") >&2',
            "  exit 1",
            "fi",
        ]
    )
