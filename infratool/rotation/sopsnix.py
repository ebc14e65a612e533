"""The generated sops-nix module of a NixOS consumer host: ``sops.secrets`` entries, never values.

A consumer on an ``os: nixos`` host gets its secret from sops-nix at
activation, out of the sops file in the flake, so infratool does not write
the value over SSH (sops-nix would overwrite or delete it on the next
deploy). It generates the host's ``hosts/<host>/generated/secrets-rotation.nix``:

* ``sops.secrets."<name>"`` per secret the host consumes: ``sopsFile`` (the
  sops file, relative to the module), ``key`` (the secret's name: its key
  path ``a/b/c`` in that file), ``path`` (the consumer's ``file.path``, when
  it has one), ``owner``, ``group``, ``mode`` and ``restartUnits`` (the
  consumer's ``units``);
* a ``command`` consumer becomes a **oneshot unit**
  (``infratool-secret-<name>``) that feeds the command its stdin template
  with the value read from the secret's path, ordered after the secrets
  (restarted, so re-run, whenever the value changes).

The text names keys, paths and units; it never holds a value (the stdin
template is rendered on the host from ``/run/secrets``). An entry is only
written once its sops file holds the key (:func:`module_text` gets the
keys present), so a secret that was never rotated does not break the
host's activation.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from infratool import nixgen
from infratool.errors import InputError
from infratool.rotation.policy import Consumer, SecretPolicy

MODULE = "secrets-rotation.nix"
"""The generated module's file name in ``hosts/<host>/generated/``."""

_UNIT_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def module_path(flake: str | Path, host: str) -> Path:
    """Where ``host``'s generated sops-nix module lives in the flake."""
    return Path(flake) / "hosts" / host / "generated" / MODULE


def unit_name(secret: str) -> str:
    """The oneshot unit of a ``command`` consumer of ``secret`` (``infratool-secret-postgres-app``)."""
    return "infratool-secret-" + _UNIT_SAFE.sub("-", secret.replace("/", "-"))


def check_consumer(spec: SecretPolicy, consumer: Consumer) -> None:
    """Refuse what sops-nix cannot deliver: a public part (sops-nix installs the stored value)."""
    if consumer.part == "public":
        where = f"{spec.file}:{consumer.line}" if consumer.line else str(spec.file)
        raise InputError(
            f"{where}: secret {spec.name!r} on NixOS host {consumer.host}: part 'public' cannot be "
            "delivered by sops-nix (it installs the stored value); store the public part as its "
            "own secret"
        )


def entries(flake: str | Path, host: str, specs: Collection[SecretPolicy]) -> list[dict[str, Any]]:
    """The module's entries for ``host`` as plain data (planned; filtered by :func:`module_text`)."""
    out = []
    base = module_path(flake, host).parent
    for spec in specs:
        for consumer in spec.consumers:
            if consumer.host != host:
                continue
            check_consumer(spec, consumer)
            sops_file = Path(spec.file) if Path(spec.file).is_absolute() else Path(flake) / spec.file
            entry: dict[str, Any] = {
                "name": spec.name,
                "file": str(sops_file),
                "rel": os.path.relpath(sops_file, base),
                "units": list(consumer.units),
            }
            if consumer.file is not None:
                f = consumer.file
                entry.update(path=f.path, mode=f"{f.mode:04o}", owner=f.owner, group=f.group)
            if consumer.command is not None:
                entry["command"] = {"run": consumer.command.run, "stdin": consumer.command.stdin}
            out.append(entry)
    return out


def _script(run: str, template: str, path: str) -> str:
    """sh that feeds ``run`` the stdin ``template`` with ``{value}`` read from ``path`` (on the host)."""
    parts = template.split("{value}")
    pieces = []
    for i, part in enumerate(parts):
        if part:
            pieces.append(f"printf '%s' {shlex.quote(part)}")
        if i < len(parts) - 1:
            pieces.append(f"cat {shlex.quote(path)}")
    if not template.endswith("\n"):
        pieces.append("echo")
    return "{ " + "; ".join(pieces) + "; } | " + run + "\n"


def module_text(items: list[dict[str, Any]], present: Mapping[str, Collection[str]]) -> str:
    """The module for ``items`` whose key ``present[file]`` holds (every other one left out)."""
    secrets: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for it in items:
        if it["name"] not in present.get(it["file"], ()):
            continue
        units = list(it["units"])
        path = it.get("path") or f"/run/secrets/{it['name']}"
        if "command" in it:
            unit = unit_name(it["name"])
            units.append(f"{unit}.service")
            services[unit] = {
                "description": f"infratool: deliver {it['name']} to its command",
                "after": ["sops-install-secrets.service"],
                "wantedBy": ["multi-user.target"],
                "serviceConfig": {"Type": "oneshot", "RemainAfterExit": True},
                "script": _script(it["command"]["run"], it["command"]["stdin"], path),
            }
        entry: dict[str, Any] = {
            "sopsFile": nixgen.Raw(_nix_path(it["rel"])),
            "key": it["name"],
            "restartUnits": list(dict.fromkeys(units)),
        }
        if it.get("path"):
            entry.update(path=it["path"], mode=it["mode"], owner=it["owner"], group=it["group"])
        prior = secrets.get(it["name"])
        if prior is not None:  # two consumers of one secret on one host: one entry, all units
            prior["restartUnits"] = list(dict.fromkeys(prior["restartUnits"] + entry["restartUnits"]))
            continue
        secrets[it["name"]] = entry
    config: dict[str, Any] = {"sops.secrets": secrets}
    if services:
        config["systemd.services"] = services
    return nixgen.module(config)


def _nix_path(rel: str) -> str:
    """A relative Nix path literal (``../../../secrets/lab.yaml``)."""
    if not re.fullmatch(r"[A-Za-z0-9._/+-]+", rel):
        raise InputError(f"sops file path {rel!r} cannot be written as a Nix path literal")
    return rel if rel.startswith(".") else "./" + rel


def write_modules(flake: str | Path, modules: Mapping[str, list[dict[str, Any]]], store: Any) -> list[str]:
    """Write each host's module from its entries and what the sops files hold now; the hosts changed."""
    present: dict[str, set[str]] = {}
    for items in modules.values():
        for it in items:
            if it["file"] not in present:
                store.invalidate(it["file"])
                present[it["file"]] = set(store.read(it["file"], missing_ok=True))
    changed = []
    for host, items in modules.items():
        path = module_path(flake, host)
        text = module_text(items, present)
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        changed.append(host)
    return changed
