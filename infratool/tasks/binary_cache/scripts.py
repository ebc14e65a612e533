"""Shell the binary-cache tasks run on hosts: start nginx, push, re-sign, check.

Every script here is built from public data only (paths, URLs, public keys,
the *path* of the key file); none ever carries a secret, so ``ps`` on the
host shows nothing worth stealing. Nix commands that read narinfo files run
with a throw-away ``XDG_CACHE_HOME``: Nix caches narinfos (signatures
included) for days, and a check must see the cache as it is now.
"""

from __future__ import annotations

import shlex

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.inventory import Host
from infratool.tasks.binary_cache import filetext as render
from infratool.tasks.binary_cache import trust
from infratool.tasks.binary_cache.spec import CacheSpec

NIX = render.NIX
NIX_FLAKES = "nix --extra-experimental-features 'nix-command flakes'"
CHUNK = 50
"""Store paths per push change: each change reports progress when it starts."""

_TMP = (
    't=$(mktemp -d /tmp/infratool-cache.XXXXXXXX)\ntrap \'chmod -R u+w "$t" 2>/dev/null; rm -rf "$t"\' EXIT'
)


@action("binary_cache.run")
def run_script(hctx: HostContext, script: str, what: str) -> None:
    """Run a script of this module, made at plan time (public data only, like every script here)."""
    hctx.run(script, what=what)


def script_change(
    host: str, task: str, description: str, script: str, what: str, action: str = "run"
) -> Change:
    """A change running ``script`` on ``host`` through :func:`run_script`."""
    return Change(
        host, task, description, op="binary_cache.run", args={"script": script, "what": what}, action=action
    )


def q(text: str) -> str:
    """Shell-quote one word."""
    return shlex.quote(text)


def nginx_running(spec: CacheSpec) -> str:
    """Exits 0 when this cache's nginx master runs (pid file, live pid, our config on its command line)."""
    return (
        f'p=$(cat {q(spec.pid_file)} 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && '
        f"tr '\\0' ' ' < /proc/$p/cmdline | grep -qF -- {q(spec.nginx_conf)}"
    )


def prepare_dirs(spec: CacheSpec) -> str:
    """Directories nginx needs before it starts (its temp paths' parent, logs, the cache)."""
    return (
        f"mkdir -p -- {q(spec.log_dir)} {q(spec.state_dir + '/nginx-tmp')} {q(spec.store_dir)} && "
        f"chmod 755 -- {q(spec.store_dir)}"
    )


def start_nginx(spec: CacheSpec, nginx: str) -> str:
    """Start this cache's nginx, or reload it if it runs (idempotent; config tested first)."""
    test = render.nginx_argv(nginx, spec, "-t", "-q")
    return "\n".join(
        [
            "set -e",
            prepare_dirs(spec),
            test,
            f"if {nginx_running(spec)}; then",
            f"  {render.nginx_argv(nginx, spec, '-s', 'reload')}",
            "else",
            # nginx daemonizes; its output must not keep our channel open.
            f"  {render.nginx_argv(nginx, spec)} </dev/null >/dev/null 2>&1",
            "fi",
        ]
    )


def start_unit(spec: CacheSpec, reload: bool) -> str:
    """Enable and start (or reload) the systemd unit."""
    unit = q(spec.unit)
    action = f"systemctl reload-or-restart {unit}" if reload else f"systemctl restart {unit}"
    return f"set -e\n{prepare_dirs(spec)}\nsystemctl daemon-reload\nsystemctl enable {unit}\n{action}"


def probe_state(spec: CacheSpec, system: str) -> str:
    """Read-only: the probe's store path, then ``present`` and its signers' key names if cached."""
    return "\n".join(
        [
            f"p=$(nix-instantiate --eval -E {q(render.probe_out_path(spec, system))} 2>/dev/null | tr -d '\"')",
            '[ -n "$p" ] || exit 1',
            'echo "$p"',
            "h=${p##*/}; h=${h%%-*}",
            f'f={q(spec.store_dir)}/"$h".narinfo',
            'if [ -f "$f" ]; then echo present; sed -n "s/^Sig: *\\([^:]*\\):.*/\\1/p" "$f"; fi',
        ]
    )


def push_probe(spec: CacheSpec, host: Host, system: str) -> str:
    """Build the probe on the server and push it into the cache, signed."""
    return "\n".join(
        [
            "set -e",
            f"p=$(nix-build --no-out-link -E {q(render.probe_expr(spec, system))})",
            f'{NIX} copy --to {q(spec.push_url(host))} "$p"',
        ]
    )


def sign_paths(spec: CacheSpec, host: Host, paths: list[str]) -> str:
    """Add a signature by the cache's current key file to ``paths`` already in the cache."""
    return (
        f'set -e\n{_TMP}\nXDG_CACHE_HOME="$t" {NIX} store sign --store {q("file://" + spec.store_dir)} '
        f"--key-file {q(spec.key_file(host))} {' '.join(q(p) for p in paths)}"
    )


def check_served(url: str, narinfo: str | None) -> str:
    """From the server itself: nix-cache-info (and a narinfo) come back over HTTP."""
    curl = "curl -fsS --max-time 10 --retry 10 --retry-delay 1 --retry-connrefused"
    lines = ["set -e", f"{curl} {q(url + '/nix-cache-info')}"]
    if narinfo:
        lines += ["echo ---", f"{curl} {q(url + '/' + narinfo)}"]
    return "\n".join(lines)


def probe_path(spec: CacheSpec, system: str) -> str:
    """Set ``$p`` to the probe's store path (evaluated, not built: read-only)."""
    return (
        f"p=$(nix-instantiate --eval -E {q(render.probe_out_path(spec, system))} | tr -d '\"')\n"
        '[ -n "$p" ] || exit 1'
    )


def fetch_check(url: str, keys: list[str], path_word: str) -> str:
    """On a client: substitute a path from ``url`` into a throw-away store, trusting only ``keys``.

    ``path_word`` is a shell word (``"$p"`` or a quoted path).
    A separate store root (``local?root=``), so a path already in the host's
    own store cannot hide the fetch; ``require-sigs`` on, so an unsigned or
    foreign-signed path fails with Nix's own signature message.
    """
    return "\n".join(
        [
            "set -e",
            _TMP,
            f'XDG_CACHE_HOME="$t/cache" nix-store --store "local?root=$t/store" --realise {path_word} '
            f"--option substituters {q(url)} --option trusted-public-keys {q(' '.join(keys))} "
            "--option require-sigs true --option narinfo-cache-negative-ttl 0 "
            "--option narinfo-cache-positive-ttl 0 --option connect-timeout 10 >/dev/null",
        ]
    )


def show_config() -> str:
    """The host's effective Nix settings as JSON (nix.conf plus includes)."""
    return f"{NIX} show-config --json"


def forget_narinfo_cache() -> str:
    """Drop root's narinfo cache, so signatures cached before a re-sign are not trusted stale."""
    return "rm -f /root/.cache/nix/binary-cache-v*.sqlite /root/.cache/nix/binary-cache-v*.sqlite-*"


def resign(spec: CacheSpec, host: Host, old_public: str, new_public: str) -> str:
    """Re-sign every path the *old* key vouches for with the key file's (new) key, then prove it.

    Paths the old key does not vouch for (pushed unsigned, or signed by
    someone else) are left alone: re-signing them would launder them.
    """
    store = q("file://" + spec.store_dir)
    return "\n".join(
        [
            "set -eu",
            _TMP,
            'export XDG_CACHE_HOME="$t/cache"',
            f'{NIX} path-info --store {store} --all | sort -u > "$t/all"',
            f"{NIX} store verify --store {store} --all --no-contents --trusted-public-keys {q(old_public)} "
            f'2>&1 >/dev/null | sed -n "s/^path \'\\(.*\\)\' is untrusted\\$/\\1/p" | sort -u > "$t/bad"',
            'comm -23 "$t/all" "$t/bad" > "$t/good"',
            'echo "re-signing $(wc -l < "$t/good") path(s); $(wc -l < "$t/bad") not signed by the old key left alone"',
            f'xargs -r {NIX} store sign --store {store} --key-file {q(spec.key_file(host))} < "$t/good"',
            f"xargs -r {NIX} store verify --store {store} --no-contents "
            f'--trusted-public-keys {q(new_public)} < "$t/good"',
            # The cache is now brought up to the new key (see resign_held). A NixOS
            # server keeps its key in /run/secrets: the state directory may not exist yet.
            f"mkdir -p -m 0700 {q(spec.state_dir)}",
            f"printf '%s\\n' {q(new_public)} > {q(signed_with_marker(spec))}",
        ]
    )


def push_survey(
    spec: CacheSpec, key_file: str, paths: list[str], paths_file: str | None, installables: list[str]
) -> str:
    """Read-only: which requested roots exist, and which paths of their closure the cache lacks.

    Output lines: ``invalid P`` (not in this store), ``nofile F``, ``unbuilt I``,
    ``refused ROOT BAD...`` (ROOT reaches paths the server cannot vouch for, see
    :mod:`.trust`), ``uncheckable`` (that check failed), then ``present P`` /
    ``missing P`` for the closure of the other roots, dependencies first.
    """
    lines = [
        "set -u",
        _TMP,
        ': > "$t/roots"',
        'root() { if nix-store --check-validity "$1" 2>/dev/null; then echo "$1" >> "$t/roots"; '
        'else echo "invalid $1"; fi; }',
    ]
    lines += [f"root {q(p)}" for p in paths]
    if paths_file:
        f = q(paths_file)
        lines.append(
            f'if [ -f {f} ]; then while read -r p; do [ -n "$p" ] && root "$p"; done < {f}; '
            f"else echo nofile {f}; fi"
        )
    for inst in installables:
        lines.append(
            f"if out=$({NIX_FLAKES} path-info {q(inst)} 2>/dev/null); then "
            f'printf "%s\\n" $out >> "$t/roots"; else echo unbuilt {q(inst)}; fi'
        )
    lines += [
        '[ -s "$t/roots" ] || exit 0',
        # Refuse (and name) every root that reaches a path the server cannot vouch for.
        trust.untrusted_function(key_file),
        trust.reach_function(),
        'reach "$t/roots" "$t/reach" && untrusted "$t/reach" "$t/bad" || { echo "uncheckable"; exit 0; }',
        'if [ -s "$t/bad" ]; then',
        '  : > "$t/ok"',
        "  while read -r r; do",
        '    echo "$r" > "$t/one"; reach "$t/one" "$t/r1"',
        '    if grep -Fxq -f "$t/bad" "$t/r1"; then echo "refused $r $(grep -Fx -f "$t/bad" "$t/r1" | tr "\\n" " ")"; '
        'else echo "$r" >> "$t/ok"; fi',
        '  done < "$t/roots"',
        '  mv "$t/ok" "$t/roots"',
        "fi",
        '[ -s "$t/roots" ] || exit 0',
        "xargs nix-store --query --requisites < \"$t/roots\" | awk '!seen[$0]++' | while read -r p; do",
        "  h=${p##*/}; h=${h%%-*}",
        f'  if [ -f {q(spec.store_dir)}/"$h".narinfo ]; then echo "present $p"; else echo "missing $p"; fi',
        "done",
    ]
    return "\n".join(lines)


def push_paths(spec: CacheSpec, host: Host) -> str:
    """Copy the store paths given on stdin (one a line) into the cache, signed; present ones are skipped.

    Checked again here, not only when planning: between the two a trusted
    builder client could have deleted a path and imported a forgery under
    its name.
    """
    return "\n".join(
        [
            "set -e",
            _TMP,
            'cat > "$t/roots"',
            trust.guard(spec.key_file(host), '"$t/roots"', "these paths"),
            f'xargs -r {NIX} copy --to {q(spec.push_url(host))} < "$t/roots"',
        ]
    )


def build_and_push(spec: CacheSpec, host: Host, installable: str) -> str:
    """Build a flake output (or any installable) on the server and push its closure, signed."""
    return "\n".join(
        [
            "set -e",
            f"{NIX_FLAKES} build --no-link {q(installable)}",
            # (`build --print-out-paths` is newer than Nix 2.8)
            f"out=$({NIX_FLAKES} path-info {q(installable)})",
            _TMP,
            'printf "%s\\n" $out > "$t/roots"',
            trust.guard(spec.key_file(host), '"$t/roots"', installable),
            f"{NIX} copy --to {q(spec.push_url(host))} $out",
        ]
    )


def signed_with_marker(spec: CacheSpec) -> str:
    """Public key of the signing key the whole cache was last brought up to (a plain file)."""
    return f"{spec.state_dir}/signed-with.pub"


def resign_held(spec: CacheSpec, host: Host) -> str:
    """Sign, with the key file's key, every cached path it has not signed and this host vouches for.

    For a cache whose key changed outside a rotation (lost, replaced): its
    narinfos carry signatures nobody trusts any more. A path is re-signed
    only if this host holds the same path with the same NAR hash *and*
    vouches for it (:mod:`.trust`: built here, content-addressed or signed by
    a trusted key); anything else is left alone and named on stdout
    (``left-alone P``), never laundered. Prints ``resigned N`` and records the
    key in :func:`signed_with_marker` when done.
    """
    store = q("file://" + spec.store_dir)
    key = q(spec.key_file(host))
    nar_hash = 'sed -n \'s/.*"narHash":"\\([^"]*\\)".*/\\1/p\''
    return "\n".join(
        [
            "set -eu",
            _TMP,
            'export XDG_CACHE_HOME="$t/cache"',
            trust.untrusted_function(spec.key_file(host)),
            f"own=$(cut -d: -f1 < {key}):$(cut -d: -f2- < {key} | base64 -d | tail -c 32 | base64 -w0)",
            f'{NIX} store verify --store {store} --all --no-contents --trusted-public-keys "$own" '
            f'2>&1 >/dev/null | sed -n "s/^path \'\\(.*\\)\' is untrusted\\$/\\1/p" | sort -u > "$t/stale"',
            ': > "$t/held"; : > "$t/alone"',
            "while read -r p; do",
            f'  here=$({NIX} path-info --json "$p" 2>/dev/null | {nar_hash}) || here=',
            f'  there=$({NIX} path-info --store {store} --json "$p" 2>/dev/null | {nar_hash}) || there=',
            '  if [ -n "$here" ] && [ "$here" = "$there" ]; then echo "$p" >> "$t/held"; '
            'else echo "$p" >> "$t/alone"; fi',
            'done < "$t/stale"',
            'untrusted "$t/held" "$t/bad" || { echo "cannot check who vouches for the cached paths" >&2; exit 1; }',
            'grep -Fxv -f "$t/bad" "$t/held" > "$t/good" || true',
            'cat "$t/bad" >> "$t/alone"',
            f'xargs -r {NIX} store sign --store {store} --key-file {key} < "$t/good"',
            f'xargs -r {NIX} store verify --store {store} --no-contents --trusted-public-keys "$own" '
            '< "$t/good" >/dev/null',
            'echo "resigned $(wc -l < "$t/good")"',
            'sed "s/^/left-alone /" "$t/alone"',
            f'printf "%s\\n" "$own" > {q(signed_with_marker(spec))}',
        ]
    )
