"""Text of every file the binary-cache tasks write: configs, units, scripts, generated Nix.

Pure functions of a :class:`CacheSpec` and public data (URLs, public keys,
paths): nothing here sees a secret key, so any of it may appear in a plan's
diff. Output is deterministic, which keeps a converged plan at zero changes.
"""

from __future__ import annotations

import shlex

from infratool import nixgen
from infratool.inventory import Host
from infratool.tasks.binary_cache import trust
from infratool.tasks.binary_cache.spec import CacheSpec

MANAGED = "Managed by infratool ({task}); local edits are overwritten on the next run."
NIX = "nix --extra-experimental-features nix-command"
# A post-build hook runs with the daemon's environment; find nix wherever it is installed.
HOOK_PATH = "/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/usr/local/bin:/usr/bin:/bin"
FLAKE_BEGIN = "# infratool:binary-cache {name} begin"
FLAKE_END = "# infratool:binary-cache {name} end"


def listen_address(host: Host, port: int) -> str:
    """nginx's ``listen`` argument for the host's own address (IPv6 bracketed)."""
    addr = f"[{host.address}]" if ":" in host.address else host.address
    return f"{addr}:{port}"


def nginx_conf(spec: CacheSpec, host: Host) -> str:
    """A private nginx configuration serving the cache directory, read-only, on the host's address.

    Everything nginx writes (pid, logs, temp files) is under /run, /var/log and
    the cache's own state directory, so /etc/nginx and a distribution nginx
    are left alone (and, in the lab, the hosts do not share files).
    """
    tmp = f"{spec.state_dir}/nginx-tmp"
    return f"""\
# {MANAGED.format(task="binary_cache.server")}
# Serves the Nix binary cache {spec.name} from {spec.store_dir}.
daemon on;
worker_processes 1;
pid {spec.pid_file};
error_log {spec.log_dir}/error.log;

events {{
    worker_connections 256;
}}

http {{
    access_log {spec.log_dir}/access.log;
    client_body_temp_path {tmp}/client-body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    server_tokens off;
    types {{
        text/x-nix-narinfo narinfo;
        text/plain nix-cache-info;
        application/x-nix-nar nar;
        application/x-xz xz;
    }}
    default_type application/octet-stream;

    server {{
        listen {listen_address(host, spec.port)};
        root {spec.store_dir};
        location / {{
            # GET and HEAD only: pushes go through `nix copy` on this host, signed.
            limit_except GET {{ deny all; }}
        }}
    }}
}}
"""


def nginx_argv(nginx: str, spec: CacheSpec, *extra: str) -> str:
    """The nginx command line for this cache's private configuration."""
    return shlex.join([nginx, "-e", f"{spec.log_dir}/error.log", "-c", spec.nginx_conf, *extra])


def systemd_unit(spec: CacheSpec, nginx: str) -> str:
    """A unit running the private nginx (hosts whose PID 1 is systemd)."""
    return f"""\
# {MANAGED.format(task="binary_cache.server")}
[Unit]
Description=Nix binary cache {spec.name} (nginx serving {spec.store_dir})
After=network-online.target
Wants=network-online.target

[Service]
Type=forking
PIDFile={spec.pid_file}
ExecStartPre={nginx_argv(nginx, spec, "-t", "-q")}
ExecStart={nginx_argv(nginx, spec)}
ExecReload={nginx_argv(nginx, spec, "-s", "reload")}
KillMode=mixed
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def nix_cache_info(store_dir: str) -> str:
    """The cache's ``nix-cache-info`` (what clients read first)."""
    return f"StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: 40\n"


def hook_script(spec: CacheSpec, host: Host) -> str:
    """The post-build hook: push each build's outputs into the cache, signed.

    The store URL names the key *file*; the key itself never appears in argv.
    """
    return (
        "#!/bin/sh\n"
        f"# {MANAGED.format(task='binary_cache.server')}\n"
        "# Nix runs this after every local build: push the outputs into the binary cache\n"
        f"# {spec.name}, signed with the key file named in the store URL.\n"
        "set -eu\n"
        f"PATH={HOOK_PATH}\n"
        "export PATH\n" + _hook_body(spec, host, "")
    )


def refused_log(spec: CacheSpec) -> str:
    """Where the server records every path the cache refused to sign (one line each)."""
    return f"{spec.log_dir}/refused.log"


def _hook_body(spec: CacheSpec, host: Host, bindir: str) -> str:
    url = shlex.quote(spec.push_url(host))
    log = shlex.quote(refused_log(spec))
    return (
        "# Nix 2.8.0 runs hooks with an empty OUT_PATHS (NixOS/nix#6446): ask the derivation.\n"
        "# A build done here for a remote client (ssh-ng) has no .drv in this store: then\n"
        "# there is nothing to ask, and a failing hook would fail the client's build, so\n"
        "# the push is skipped (the client can push the result itself).\n"
        'if [ -z "${OUT_PATHS:-}" ] && [ -n "${DRV_PATH:-}" ]; then\n'
        f'  OUT_PATHS=$({bindir}nix-store --query --outputs "$DRV_PATH" 2>/dev/null) || {{\n'
        '    echo "post-build-hook: $DRV_PATH is not in this store (a remote build?): not pushed" >&2\n'
        "    exit 0\n"
        "  }\n"
        "fi\n"
        '[ -n "${OUT_PATHS:-}" ] || exit 0\n'
        "# Sign only what this host vouches for (see infratool/tasks/binary_cache/trust.py):\n"
        "# the outputs' closure and everything the build read must be built here, content-\n"
        "# addressed or signed by a trusted key. A path a builder client imported is none of\n"
        "# these: the build is not pushed, and the refusal is logged. The build itself stands.\n"
        + trust.untrusted_function(spec.key_file(host), bindir)
        + "\n"
        + trust.reach_function(bindir)
        + "\n"
        "t=$(mktemp -d /tmp/infratool-hook.XXXXXXXX)\n"
        "trap 'rm -rf \"$t\"' EXIT\n"
        'printf "%s\\n" $OUT_PATHS > "$t/roots"  # shellcheck disable=SC2086\n'
        'if ! reach "$t/roots" "$t/paths" || ! untrusted "$t/paths" "$t/bad"; then\n'
        '  echo "cannot check who vouches for $OUT_PATHS: not pushed" >&2\n'
        "  exit 0\n"
        "fi\n"
        'if [ -s "$t/bad" ]; then\n'
        '  bad=$(tr "\\n" " " < "$t/bad"); bad=${bad% }\n'
        '  echo "REFUSED to sign $OUT_PATHS: built from or referring to $bad'
        ' (neither built on this host nor signed by a trusted key)" >&2\n'
        f'  {{ mkdir -p "$(dirname {log})" && printf "%s refused %s untrusted %s\\n" '
        f'"$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$OUT_PATHS" "$bad" >> {log}; }} 2>/dev/null || true\n'
        "  exit 0\n"
        "fi\n"
        "# shellcheck disable=SC2086\n"
        f"{bindir}{NIX} copy --to {url} $OUT_PATHS\n"
    )


def hook_conf(spec: CacheSpec) -> str:
    """nix.conf fragment installing the post-build hook."""
    return f"# {MANAGED.format(task='binary_cache.server')}\npost-build-hook = {spec.hook_script}\n"


def client_conf(spec: CacheSpec, url: str, keys: list[str]) -> str:
    """nix.conf fragment of a client: the substituter and the keys it must be signed with.

    ``extra-`` settings add to what nix.conf already has, so other caches
    (cache.nixos.org, ...) keep working.
    """
    return (
        f"# {MANAGED.format(task='binary_cache.client')}\n"
        f"# Substitute from the binary cache {spec.name}; accept only paths signed by its keys.\n"
        f"extra-substituters = {url}\n"
        f"extra-trusted-public-keys = {' '.join(keys)}\n"
    )


def include_line(path: str) -> str:
    """The nix.conf line including a fragment (``!``: a missing file is not an error)."""
    return f"!include {path}"


def add_include(conf: str, path: str) -> str:
    """``conf`` with an include of ``path`` appended, unless it has one."""
    line = include_line(path)
    lines = conf.splitlines()
    if any(existing.strip() in (line, f"include {path}") for existing in lines):
        return conf if conf.endswith("\n") or not conf else conf + "\n"
    return "\n".join([*lines, line]) + "\n"


def _attr(*parts: str) -> str:
    # nixgen.to_nix splits dict keys on '.', but cache names may contain dots:
    # attribute paths are spelled here, one quoted part at a time.
    return ".".join(nixgen.attr_name(p) for p in parts)


def _module(lines: list[tuple[str, object]], args: str = "{ ... }:", note: str = "") -> str:
    body = "".join(f"  {path} = {nixgen.to_nix(value, 1)};\n" for path, value in lines)
    return f"{nixgen.HEADER}{note}{args}\n{{\n{body}}}\n"


def nixos_client_module(spec: CacheSpec, url: str, keys: list[str]) -> str:
    """``nix.settings`` for a NixOS client (lists merge with cache.nixos.org's defaults)."""
    return _module(
        [
            (_attr("nix", "settings", "substituters"), [url]),
            (_attr("nix", "settings", "trusted-public-keys"), keys),
        ],
        note=f"# Binary cache {spec.name}: substitute from it, trust only paths signed by its keys.\n",
    )


def nixos_server_module(
    spec: CacheSpec, host: Host, sops_key: str, sops_file: str, post_build_hook: bool
) -> str:
    """The NixOS equivalent of the server setup: sops-nix key, nginx virtual host, cache dir, hook."""
    secret = f"binary-cache/{spec.name}/secret-key"
    lines: list[tuple[str, object]] = [
        (
            _attr("sops", "secrets", secret),
            {"sopsFile": nixgen.Raw(sops_file), "key": sops_key, "mode": "0600"},
        ),
        (_attr("systemd", "tmpfiles", "rules"), [f"d {spec.store_dir} 0755 root root -"]),
        (_attr("services", "nginx", "enable"), True),
        (
            _attr("services", "nginx", "virtualHosts", spec.name),
            {"listen": [{"addr": host.address, "port": spec.port}], "root": spec.store_dir},
        ),
        (_attr("networking", "firewall", "allowedTCPPorts"), [spec.port]),
    ]
    if post_build_hook:
        # In a Nix '' string ${...} interpolates: the shell's own ${VAR:-} are
        # escaped as ''${, and the nix binaries come from config.nix.package.
        marker = "@NIXBIN@"
        body = "set -eu\n" + _hook_body(spec, host, marker)
        body = body.replace("''", "'''").replace("${", "''${").replace(marker, "${config.nix.package}/bin/")
        hook = nixgen.Raw(
            f"toString (pkgs.writeShellScript {nixgen.string(f'binary-cache-{spec.name}-hook')} ''\n{body}'')"
        )
        lines.append((_attr("nix", "settings", "post-build-hook"), hook))
    return _module(
        lines, args="{ config, pkgs, ... }:", note=f"# Binary cache {spec.name}, served by {host.name}.\n"
    )


def flake_settings(url: str, keys: list[str]) -> dict[str, list[str]]:
    """The flake ``nixConfig`` settings for the cache."""
    return {"extra-substituters": [url], "extra-trusted-public-keys": keys}


def flake_config_file(spec: CacheSpec, url: str, keys: list[str]) -> str:
    """The generated, owned ``nix/binary-cache/<name>.nix``: the settings as a plain attribute set.

    Nix only accepts a *literal* ``nixConfig`` in flake.nix (``import`` there
    fails: "expected a set but got a thunk"), so flake.nix cannot import this
    file; infratool keeps the marked block in flake.nix equal to it instead.
    """
    return (
        f"{nixgen.HEADER}"
        f"# Binary cache {spec.name}: the flake nixConfig settings (mirrored into flake.nix\n"
        f"# between the '{FLAKE_BEGIN.format(name=spec.name)}' / 'end' markers).\n"
        f"{nixgen.to_nix(flake_settings(url, keys))}\n"
    )


def flake_block(url: str, keys: list[str]) -> list[str]:
    """The lines infratool owns inside flake.nix's ``nixConfig`` (one setting per line)."""
    return [
        f"{_attr(k)} = [ {' '.join(nixgen.string(x) for x in v)} ];"
        for k, v in flake_settings(url, keys).items()
    ]


def edit_flake(text: str, name: str, block: list[str]) -> str | None:
    """flake.nix with the marked block replaced by ``block``; None if it has no markers.

    Only the lines between the markers change, so the rest of the user's
    flake.nix (formatting, comments, other settings) is never rewritten.
    """
    begin, end = FLAKE_BEGIN.format(name=name), FLAKE_END.format(name=name)
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        return None
    i, j = starts[0], ends[0]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    return "".join([*lines[: i + 1], *(f"{indent}{b}\n" for b in block), *lines[j:]])


def probe_expr(spec: CacheSpec, system: str) -> str:
    """A tiny input-addressed derivation every cache holds, for end-to-end checks.

    Input-addressed on purpose: Nix accepts a content-addressed path (what
    ``nix-store --add`` makes) without any signature, so only a built output
    proves that clients check the cache's signatures.
    """
    name = f"infratool-cache-probe-{spec.name}"
    return (
        f"derivation {{ name = {nixgen.string(name)}; system = {nixgen.string(system)}; "
        f'builder = "/bin/sh"; args = [ "-c" {nixgen.string(f"echo {spec.name} > $out")} ]; }}'
    )


def probe_out_path(spec: CacheSpec, system: str) -> str:
    """The probe's output path as an expression (evaluated without building or writing)."""
    return f"({probe_expr(spec, system)}).outPath"
