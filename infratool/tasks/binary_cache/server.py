"""``binary_cache.server``: the cache host's signing key, cache directory and HTTP server.

On an ``os: linux`` server, over SSH:

1. the signing key (from sops; generated and stored there first if new) as a
   0600 file in the cache's private state directory;
2. the cache directory with its ``nix-cache-info``;
3. a private nginx configuration (never ``/etc/nginx``) listening on the
   host's own address, started as a systemd unit where systemd runs, else
   directly (pid file under /run; started or reloaded idempotently);
4. optionally a post-build hook that pushes every local build, signed;
5. a small probe path built and pushed, so clients can prove they fetch
   signed paths (see ``binary_cache.client``'s verify).

On ``os: nixos`` the same is a generated module (sops-nix secret, nginx
virtual host, tmpfiles rule, hook) plus the host's deploy step.
"""

from __future__ import annotations

from typing import Any

from infratool import log
from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import HostError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.binary_cache import filetext as render
from infratool.tasks.binary_cache import scripts
from infratool.tasks.binary_cache.install import file_changes
from infratool.tasks.binary_cache.keys import CURRENT, NEXT, SOPS_FILE, Keys, key_name, load_keys, public_key
from infratool.tasks.binary_cache.spec import CACHE_PARAMS, NIX_CONF, CacheSpec, cache_spec, validate_server
from infratool.tasks.lib.local import generated_path, local_file_change

PORT_FACT = "ss -Hltn"


def server_facts(spec: CacheSpec, host: Host) -> list[FactRequest]:
    """Facts the server plan reads (also requested by tasks that change the server's key)."""
    if host.is_nixos:
        return [
            FactRequest("exists", spec.key_file(host)),
            FactRequest("stdout", scripts.probe_state(spec, host.system)),
        ]
    return [
        FactRequest("file_meta", spec.key_file(host)),
        FactRequest("file", spec.nginx_conf),
        FactRequest("file", f"{spec.store_dir}/nix-cache-info"),
        FactRequest("file", spec.hook_script),
        FactRequest("file", spec.hook_conf),
        FactRequest("file", NIX_CONF),
        FactRequest("file", f"/etc/systemd/system/{spec.unit}"),
        FactRequest("command", "nginx"),
        FactRequest("succeeds", scripts.nginx_running(spec)),
        FactRequest("succeeds", f"systemctl is-active --quiet {spec.unit}"),
        FactRequest("stdout", scripts.probe_state(spec, host.system)),
        FactRequest("stdout", PORT_FACT),
        FactRequest("nix_store_dir"),
        FactRequest("file", scripts.signed_with_marker(spec)),
    ]


def key_file_changes(hctx: HostContext, spec: CacheSpec, signer: Any, task: str) -> list[Change]:
    """Make the server's key file hold ``signer`` (0600 root; compared by hash, never shown)."""
    return file_changes(hctx, task, spec.key_file(hctx.host), signer, 0o600, "root", "root", secret=True)


def probe_info(hctx: HostContext, spec: CacheSpec) -> tuple[str, bool, list[str]]:
    """(probe store path, present in the cache?, key names that signed it) from the server's facts."""
    out = hctx.facts.get("stdout", scripts.probe_state(spec, hctx.host.system))
    if not out or not out.strip():
        raise HostError(
            hctx.name, "cannot evaluate a Nix expression (is nix installed, nix-instantiate on PATH?)"
        )
    lines = out.split()
    return lines[0], len(lines) > 1 and lines[1] == "present", lines[2:]


def _port_taken(hctx: HostContext, spec: CacheSpec) -> str | None:
    listing = hctx.facts.get("stdout", PORT_FACT)
    if not listing:
        return None  # no ss on this host: nginx itself will report a clash
    addr = render.listen_address(hctx.host, spec.port)
    wanted = {addr, f"0.0.0.0:{spec.port}", f"*:{spec.port}", f"[::]:{spec.port}"}
    for line in listing.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[3] in wanted:
            return cols[3]
    return None


def plan_linux_server(
    hctx: HostContext, spec: CacheSpec, keys: Keys, task: str, post_build_hook: bool
) -> list[Change]:
    """Every change that makes an ``os: linux`` server serve the cache (phases 1-3)."""
    host = hctx.host
    nginx = hctx.facts.get("command", "nginx")
    if not nginx:
        raise HostError(
            host.name,
            "nginx not found: install it (Debian: apt-get install nginx-light; disable its default "
            "site if it listens on the cache's port)",
        )
    systemd = bool(hctx.facts.get("systemd"))
    files: list[Change] = []
    files += key_file_changes(hctx, spec, keys.signer, task)
    files += file_changes(
        hctx,
        task,
        f"{spec.store_dir}/nix-cache-info",
        render.nix_cache_info(_store_dir(hctx)).encode(),
        0o644,
        None,
        None,
    )
    conf_changes = file_changes(
        hctx, task, spec.nginx_conf, render.nginx_conf(spec, host).encode(), 0o644, None, None
    )
    unit_changes: list[Change] = []
    if systemd:
        unit_changes = file_changes(
            hctx,
            task,
            f"/etc/systemd/system/{spec.unit}",
            render.systemd_unit(spec, nginx).encode(),
            0o644,
            None,
            None,
        )
    files += conf_changes + unit_changes
    if post_build_hook:
        files += file_changes(
            hctx, task, spec.hook_script, render.hook_script(spec, host).encode(), 0o755, None, None
        )
        files += file_changes(hctx, task, spec.hook_conf, render.hook_conf(spec).encode(), 0o644, None, None)
        files += include_changes(hctx, spec.hook_conf, task)
    elif hctx.file(spec.hook_conf).exists:
        files.append(_remove(hctx, spec.hook_conf, task))

    service: list[Change] = []
    running = hctx.facts.get(
        "succeeds", f"systemctl is-active --quiet {spec.unit}" if systemd else scripts.nginx_running(spec)
    )
    if not running or conf_changes or unit_changes:
        if not running:
            clash = _port_taken(hctx, spec)
            if clash:
                raise HostError(
                    host.name, f"port {spec.port} is already in use ({clash}): choose another 'port'"
                )
        verb = "reload" if running else "start"
        cmd = (
            scripts.start_unit(spec, reload=bool(running and not unit_changes))
            if systemd
            else scripts.start_nginx(spec, nginx)
        )
        how = f"unit {spec.unit}" if systemd else f"nginx -c {spec.nginx_conf}"
        service.append(
            scripts.script_change(
                host.name,
                task,
                f"{verb} the cache's HTTP server ({how}) on {render.listen_address(host, spec.port)}",
                cmd,
                f"{verb} nginx",
            )
        )

    probe: list[Change] = resign_changes(hctx, spec, keys, task)
    path, present, signers = probe_info(hctx, spec)
    signer = key_name(keys.signer)
    if not present:
        probe.append(
            scripts.script_change(
                host.name,
                task,
                f"build the probe path {path} and push it to the cache, signed by {signer}",
                scripts.push_probe(spec, host, host.system),
                "push probe",
            )
        )
    elif signer not in signers:
        probe.append(
            scripts.script_change(
                host.name,
                task,
                f"sign the probe path {path} with {signer}",
                scripts.sign_paths(spec, host, [path]),
                "sign probe",
            )
        )
    return _phased(files, 1) + _phased(service, 2) + _phased(probe, 3)


def resign_changes(hctx: HostContext, spec: CacheSpec, keys: Keys, task: str) -> list[Change]:
    """Bring what the cache already holds up to the signing key, when the key changed outside a rotation.

    A cache re-provisioned after its key was lost (or replaced) still serves
    narinfos signed by the old key, and every client would refuse them,
    the probe included, until a second run. The marker file names the key
    the cache was last brought up to; when it is not the signer, the cache
    is re-signed (what the server vouches for only). A rotation in progress
    re-signs by itself (``binary_cache.rotate_key``).
    """
    if keys.rotating:
        return []
    marker = hctx.file(scripts.signed_with_marker(spec))
    want = public_key(keys.signer)
    if marker.exists and (marker.text or "").strip() == want:
        return []
    return [
        Change(
            hctx.name,
            task,
            f"sign what {spec.store_dir} already holds with {key_name(keys.signer)} "
            "(paths this host built or trusts; others are left alone)",
            op="binary_cache.resign_held",
            args={"script": scripts.resign_held(spec, hctx.host)},
            action="run",
        )
    ]


@action("binary_cache.resign_held")
def resign_held(hctx: HostContext, script: str) -> None:
    """Run :func:`scripts.resign_held`'s script; name the paths it had to leave alone."""
    res = hctx.run(script, what="re-sign the cache")
    alone = [ln.split(" ", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("left-alone ")]
    if alone:
        log.get_logger("infratool.binary_cache").warning(
            "cached paths left alone: this host cannot vouch for them, so the new key does not sign them",
            host=hctx.name,
            count=len(alone),
            paths=alone,
        )


def include_changes(hctx: HostContext, fragment: str, task: str) -> list[Change]:
    """Add ``!include <fragment>`` to nix.conf (other lines kept; the overlay composes edits)."""
    current = hctx.file(NIX_CONF)
    text = (current.text or "") if current.exists else ""
    new = render.add_include(text, fragment)
    if current.exists and new == text:
        return []
    return file_changes(hctx, task, NIX_CONF, new.encode(), None if current.exists else 0o644, None, None)


def _remove(hctx: HostContext, path: str, task: str) -> Change:
    hctx.plan_remove(path)
    return Change(hctx.name, task, f"remove {path}", op="files.remove", args={"path": path}, action="delete")


def _store_dir(hctx: HostContext) -> str:
    return hctx.facts.get("nix_store_dir") or "/nix/store"


def _phased(changes: list[Change], phase: int) -> list[Change]:
    for c in changes:
        c.phase = phase
        c.requires = (*c.requires, "local")  # the key must be in sops before the server uses it
    return changes


def plan_nixos_server(
    ctx: PlanContext, hctx: HostContext, spec: CacheSpec, keys: Keys, task: str, post_build_hook: bool
) -> list[Change]:
    """The generated module for a NixOS server (deployed by the runner), and the probe once it can."""
    host = hctx.host
    which = NEXT if keys.signer is keys.next else CURRENT
    module = render.nixos_server_module(
        spec, host, spec.sops_key(which), f"../../../secrets/{SOPS_FILE}", post_build_hook
    )
    rel = generated_path(host.name, f"binary-cache-{spec.name}-server")
    changes = local_file_change(ctx.local, task, rel, module, deploy=host.name)
    if hctx.facts.get("exists", spec.key_file(host)):  # sops-nix has installed the key: push the probe
        path, present, _ = probe_info(hctx, spec)
        if not present:
            push = scripts.script_change(
                host.name,
                task,
                f"build the probe path {path} and push it to the cache",
                scripts.push_probe(spec, host, host.system),
                "push probe",
            )
            push.phase = 3
            changes.append(push)
    return changes


@register
class BinaryCacheServer(Task):
    """Serve a signed Nix binary cache over HTTP from one host."""

    name = "binary_cache.server"
    summary = "signing key (sops), cache directory, nginx serving it, optional post-build hook"
    params = {
        **CACHE_PARAMS,
        "post_build_hook": Param(bool, default=False, help="push every build on the server into the cache"),
    }
    planned_keys: Keys | None = None
    """The keys this task planned with (what verify checks)."""

    def validate(self) -> None:
        validate_server(self)
        self.spec = cache_spec(self)

    def label(self) -> str:
        return f"{self.name} {self.spec.name} on {self.args['server']}"

    def targets(self, selected: list[Host]) -> list[Host]:
        return [h for h in selected if h.name == self.args["server"]]

    def fact_requests(self, host: Host) -> list[FactRequest]:
        return server_facts(self.spec, host)

    def plan(self, ctx: PlanContext) -> list[Change]:
        hctx = ctx.hosts.get(self.args["server"])
        if hctx is None:
            return []  # not selected, or unreachable (already reported)
        keys, changes = load_keys(ctx, self.spec, self.name)
        # verify() checks against these keys: a later task of the run (a rotation)
        # may already have planned what comes after them.
        self.planned_keys = keys
        if hctx.host.is_nixos:
            return changes + plan_nixos_server(
                ctx, hctx, self.spec, keys, self.name, self.args["post_build_hook"]
            )
        return changes + plan_linux_server(hctx, self.spec, keys, self.name, self.args["post_build_hook"])

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        """The cache is served over HTTP and its probe is signed by the signing key.

        A NixOS server is verified after its deploy, inside the deploy's
        confirm window (the runner calls this over the new connection): only
        then has sops-nix installed the key, so the probe is pushed here,
        signed by the installed key, before the check. A server that cannot
        sign and serve rolls back.
        """
        hctx = ctx.hosts.get(self.args["server"])
        if hctx is None or hctx.name not in changed:
            return {}
        keys = self.planned_keys or load_keys(ctx, self.spec, self.name)[0]
        if hctx.host.is_nixos:
            problem = publish_probe(hctx, self.spec)
            if problem:
                return {hctx.name: problem}
        problem = check_server(hctx, self.spec, keys)
        if problem:
            return {hctx.name: problem}
        ctx.prove(hctx.name, f"serves {self.spec.url}, probe signed by {key_name(keys.signer)}")
        return {}


def publish_probe(hctx: HostContext, spec: CacheSpec) -> str | None:
    """On a NixOS server after its deploy: push the probe, signed by the key sops-nix installed.

    Returns the problem (no key installed, the push failed), None when the
    probe is in the cache. ``nix copy`` skips a path the cache already has.
    """
    key = spec.key_file(hctx.host)
    if not hctx.run(f"test -s {scripts.q(key)}", check=False).ok:
        return f"the signing key is not installed at {key} (sops-nix did not activate it)"
    res = hctx.run(scripts.push_probe(spec, hctx.host, hctx.host.system), check=False, what="push probe")
    if not res.ok:
        tail = res.stderr.strip().splitlines()[-1:] or [f"exit {res.exited}"]
        return f"could not push the probe path into {spec.store_dir}: {tail[0]}"
    return None


def check_server(hctx: HostContext, spec: CacheSpec, keys: Keys) -> str | None:
    """Over HTTP, from the server: nix-cache-info is served and the probe is signed by the signer."""
    direct = f"http://{render.listen_address(hctx.host, spec.port)}"
    path = hctx.run(scripts.probe_state(spec, hctx.host.system), check=False).stdout.split()
    narinfo = path[0].rsplit("/", 1)[-1].split("-", 1)[0] + ".narinfo" if path else None
    res = hctx.run(scripts.check_served(direct, narinfo), check=False)
    if not res.ok:
        return f"{direct} does not serve the cache: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.exited}"
    if "StoreDir:" not in res.stdout:
        return f"{direct}/nix-cache-info has no StoreDir"
    signer = key_name(keys.signer)
    if narinfo and f"Sig: {signer}:" not in res.stdout:
        return f"the probe path served by {direct} is not signed by {signer}"
    return None
