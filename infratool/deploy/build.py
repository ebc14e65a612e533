"""The controller's Nix side of a deploy: build the systems, copy a closure to its host.

Split from :mod:`.engine` (which drives a host's activation and
confirmation) along the line between Nix on the controller and the host's
watchdog. Everything here runs ``nix`` with a minimal environment (the
controller's secrets never reach it) and ``NIX_SSHOPTS`` from the inventory.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

from infratool.errors import CommandFailed, InfratoolError
from infratool.inventory import Host
from infratool.localenv import DEPLOY, minimal_env
from infratool.nixssh import nix_ssh_config, ssh_alias
from infratool.secrets.secret import REDACTOR

from . import hostside

NIX_FLAGS = ("--extra-experimental-features", "nix-command flakes")
CHUNK = 256 * 1024
"""Bytes of an exported closure read and sent at a time."""
LOCAL_ENV = (*DEPLOY, "NIX_CONFIG")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def toplevel_attr(flake: Path, host: str) -> str:
    """The installable of ``host``'s system: ``path:<flake>#nixosConfigurations."<host>".config.system.build.toplevel``.

    ``path:`` (not ``git+file:``) so generated files are built whether or not
    they are committed yet.
    """
    return f'path:{Path(flake).resolve()}#nixosConfigurations."{host}".config.system.build.toplevel'


def _nix(
    argv: list[str], what: str, host: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    full = {**minimal_env(LOCAL_ENV), **(env or {})}
    proc = subprocess.run(argv, capture_output=True, env=full, cwd=cwd, check=False)
    if proc.returncode != 0:
        # Nix colours its errors and ends them with a hint ("use '--show-trace'"): keep what says why.
        text = _ANSI.sub("", proc.stderr.decode(errors="replace"))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "--show-trace" not in ln]
        errors = [ln for ln in lines if ln.startswith("error:")] or lines[-3:]
        raise CommandFailed(host, what, proc.returncode, REDACTOR.redact(" ".join(errors[-2:])))
    return proc.stdout.decode()


def host_from_args(data: dict[str, Any]) -> Host:
    """A builder named in a deploy's args (plain data, so a saved plan carries it) as a Host."""
    key = data.get("ssh_key")
    return Host(
        name=data["name"],
        address=data["address"],
        port=int(data["port"]),
        user=data["user"],
        ssh_key=Path(key) if key else None,
        host_keys=tuple(data["host_keys"]),
    )


def host_to_args(host: Host) -> dict[str, Any]:
    """What :func:`host_from_args` needs, as plain data."""
    return {
        "name": host.name,
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "ssh_key": str(host.ssh_key) if host.ssh_key else None,
        "host_keys": list(host.host_keys),
    }


def derivations(flake: Path, names: list[str]) -> dict[str, str]:
    """The toplevel derivations of ``names``, from **one** evaluation: name → ``.drv`` path."""
    hosts = " ".join(json.dumps(n) for n in names)
    apply = (
        "cs: builtins.listToAttrs (map (n: { name = n; value = "
        f"cs.${{n}}.config.system.build.toplevel.drvPath; }}) [ {hosts} ])"
    )
    argv = [
        "nix",
        *NIX_FLAGS,
        "eval",
        "--json",
        f"path:{Path(flake).resolve()}#nixosConfigurations",
        "--apply",
        apply,
    ]
    out = _nix(argv, f"evaluate the systems of {', '.join(names)}", names[0], cwd=flake)
    try:
        drvs = json.loads(out)
        return {n: str(drvs[n]) for n in names}
    except (ValueError, LookupError, TypeError):
        raise CommandFailed(
            names[0], "read nix eval --json", 0, f"unexpected output: {out[:300]!r}"
        ) from None


def build_many(flake: Path, names: list[str], build_on: Host | None = None) -> dict[str, str]:
    """Build the toplevels of ``names``; name → store path.

    One host: ``nix build`` of its flake attribute. Several: **one**
    evaluation (:func:`derivations`), then one ``nix build`` of the
    derivations, matched back by ``drvPath`` (Nix 2.8's ``--json`` does not
    keep the order of the installables). With ``build_on``, built in that
    host's store over ssh-ng (the derivations are copied there).
    """
    if len(names) == 1:
        wanted = {toplevel_attr(flake, names[0]): names[0]}
    else:
        wanted = {drv: name for name, drv in derivations(flake, names).items()}
    argv = ["nix", *NIX_FLAGS, "build", "--no-link", "--json", *wanted]
    what = f"build the system of {', '.join(names)}"
    if build_on is None:
        out = _nix(argv, what, names[0], cwd=flake)
    else:
        # Evaluate here, build in the builder's store: the closure never passes through the controller.
        argv += ["--eval-store", "auto", "--store", f"ssh-ng://{build_on.user}@{ssh_alias(build_on)}"]
        with nix_ssh_config(build_on) as env:
            out = _nix(argv, f"{what} on {build_on.name}", names[0], env, cwd=flake)
    try:
        results = json.loads(out)
        if len(names) == 1:
            return {names[0]: results[0]["outputs"]["out"]}
        by_drv = {r["drvPath"]: r["outputs"]["out"] for r in results}
        return {name: by_drv[drv] for drv, name in wanted.items()}
    except (ValueError, LookupError, TypeError):
        raise CommandFailed(
            names[0], "read nix build --json", 0, f"unexpected output: {out[:300]!r}"
        ) from None


class _BatchBuild:
    """One ``nix build`` for every host deployed together, shared by their (parallel) deploy actions.

    Apply-time only (nothing from planning): the first action of a batch to
    arrive builds them all while the others wait, so N hosts cost one
    evaluation process, not N competing for the controller's cores. If the
    batch fails, each host builds on its own, so a broken host fails alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple, concurrent.futures.Future] = {}

    def get(self, flake: Path, batch_id: str, batch: list[str], host: str, build_on: Host | None) -> str:
        key = (batch_id, str(flake), tuple(batch), build_on.name if build_on else None)
        with self._lock:
            future = self._results.get(key)
            mine = future is None
            if mine:
                future = self._results[key] = concurrent.futures.Future()
        if mine:
            try:
                future.set_result(build_many(flake, list(batch), build_on))
            except Exception as exc:
                future.set_exception(exc)
        try:
            return future.result()[host]
        except InfratoolError:
            return build_many(flake, [host], build_on)[host]


_BATCH = _BatchBuild()


def build(flake: Path, host: Host, build_on: Host | None = None, batch: dict[str, Any] | None = None) -> str:
    """Build ``host``'s toplevel (with the rest of ``batch`` in one ``nix build``); its store path.

    ``batch``: ``{"id": ..., "hosts": [...]}``, the hosts of one plan's deploys.
    """
    hosts = list((batch or {}).get("hosts") or [])
    if len(hosts) > 1 and host.name in hosts:
        return _BATCH.get(flake, str(batch["id"]), hosts, host.name, build_on)
    return build_many(flake, [host.name], build_on)[host.name]


def copy(remote: Any, host: Host, path: str, build_on: Host | None = None) -> bool:
    """Copy ``path``'s closure to ``host`` unless it is there already; whether anything was copied.

    Built here: the closure's paths the host lacks (one command on the open
    connection, which is all a closure already there costs) are sent as a
    ``nix-store --export`` stream into ``nix-store --import`` over that same
    connection, so a copy costs no new ssh process or handshake on either
    side (what made four hosts' copies compete for the cores). Built on a
    builder: ``nix copy`` from its store (its own ssh, options from the
    inventory), run only for a missing path.
    """
    if build_on is not None:
        if remote.run(hostside.check_valid_script(path), check=False, what="check the store path").ok:
            return False
        # From the builder's store to the host's, through the controller
        # (neither host holds a key to the other); each side pinned.
        dst = f"ssh-ng://{host.user}@{ssh_alias(host)}"
        src = f"ssh-ng://{build_on.user}@{ssh_alias(build_on)}"
        argv = ["nix", *NIX_FLAGS, "copy", "--no-check-sigs", "--from", src, "--to", dst, path]
        with nix_ssh_config(build_on, host) as env:
            _nix(argv, f"copy the system from {build_on.name} to {host.name}", host.name, env)
        return True
    closure = _nix(["nix-store", "--query", "--requisites", path], "list the system's closure", host.name)
    res = remote.run(
        hostside.print_invalid_script(), stdin=closure, check=False, what="check the closure's store paths"
    )
    missing = res.stdout.split()
    if not res.ok or not set(missing) <= set(closure.split()):
        raise CommandFailed(host.name, "check the closure's store paths", res.exited, res.stderr)
    if not missing:
        return False
    _send_paths(remote, host, missing)
    return True


def _send_paths(remote: Any, host: Host, paths: list[str]) -> None:
    """``nix-store --export`` of ``paths`` here, streamed into ``nix-store --import`` on ``host``."""
    argv = ["nix-store", "--export", *paths]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=minimal_env(LOCAL_ENV))
    assert proc.stdout is not None and proc.stderr is not None

    def chunks():
        while chunk := proc.stdout.read(CHUNK):
            yield chunk

    try:
        res = remote.run(hostside.IMPORT_SCRIPT, stdin=chunks(), check=False, what="import the closure")
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.wait()
    if proc.returncode != 0:
        raise CommandFailed(host.name, "export the closure", proc.returncode, REDACTOR.redact(err))
    if not res.ok:
        raise CommandFailed(host.name, f"copy the system to {host.name}", res.exited, res.stderr)
