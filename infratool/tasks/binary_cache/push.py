"""``binary_cache.push``: copy store paths (or a flake output's closure) into the cache, signed.

Runs on the cache server, where the signing key is: the key never travels to
CI or to another host. Pushing from CI means running this task (see
docs/binary-cache.md): CI names the paths in the playbook, in a file on the
server (``paths_file``), or as installables the server builds.

Planning surveys the requested closure in the host's one fact round trip and
plans only the paths whose ``.narinfo`` the cache lacks, so a second push
plans nothing. Large closures are split into changes of :data:`CHUNK` paths:
each change is one progress event in the runner's per-host display.
"""

from __future__ import annotations

import re
from typing import Any

from infratool.changes import Change, action
from infratool.context import HostContext
from infratool.errors import HostError
from infratool.facts import FactRequest
from infratool.inventory import Host
from infratool.tasks.base import Param, PlanContext, Task, register
from infratool.tasks.binary_cache import scripts
from infratool.tasks.binary_cache.client import cache_args, cache_of
from infratool.tasks.binary_cache.spec import CACHE_PARAMS, CacheSpec, cache_spec, validate_server
from infratool.tasks.lib.checks import check_abs_path

_STORE_PATH = re.compile(r"^/[A-Za-z0-9+._/=-]+$")


def check_store_paths(value: list) -> str | None:
    """Param check: absolute store paths without spaces or shell syntax."""
    for p in value:
        if not isinstance(p, str) or not _STORE_PATH.match(p):
            return f"not a store path: {p!r}"
    return None


def survey(hctx, spec: CacheSpec, args: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing paths in push order, paths already present, installables not built yet)."""
    out = hctx.facts.get("stdout", _survey_script(spec, hctx.host, args))
    if out is None:
        raise HostError(hctx.name, "could not survey the store paths to push (is nix installed?)")
    missing, present, unbuilt = [], [], []
    refused: list[str] = []
    for line in out.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "uncheckable":
            raise HostError(hctx.name, "cannot check who vouches for the paths to push: nothing pushed")
        if kind == "refused":
            root, _, bad = value.partition(" ")
            refused.append(f"{root} (reaches {bad.strip()})")
        if kind == "invalid":
            raise HostError(
                hctx.name, f"{value} is not a valid path in this host's Nix store: nothing to push"
            )
        if kind == "nofile":
            raise HostError(hctx.name, f"paths_file {value} does not exist")
        if kind == "unbuilt":
            unbuilt.append(value.strip("'"))
        elif kind == "missing":
            missing.append(value)
        elif kind == "present":
            present.append(value)
    if refused:
        # Signing would vouch for content a builder client may have chosen.
        raise HostError(
            hctx.name,
            "REFUSED to sign "
            + "; ".join(refused)
            + ": neither built on this host nor signed by a trusted key; nothing pushed",
        )
    return missing, present, unbuilt


def _survey_script(spec: CacheSpec, host: Host, args: dict) -> str:
    return scripts.push_survey(
        spec, spec.key_file(host), args["paths"] or [], args["paths_file"], args["installables"] or []
    )


def push_changes(
    host: str, spec: CacheSpec, missing: list[str], present: int, task: str, chunk: int
) -> list[Change]:
    """One change per ``chunk`` missing paths, in order (dependencies first)."""
    changes = []
    total = len(missing)
    for start in range(0, total, chunk):
        part = missing[start : start + chunk]
        desc = f"push paths {start + 1}-{start + len(part)} of {total} to {spec.store_dir}, signed"
        if start == 0 and present:
            desc += f" ({present} already in the cache)"
        changes.append(
            Change(
                host,
                task,
                desc,
                op="binary_cache.push",
                args={"cache": cache_args(spec), "paths": part},
                diff="".join(f"+ {p}\n" for p in part).rstrip("\n"),
                action="create",
            )
        )
    return changes


@action("binary_cache.push")
def push(h: HostContext, cache: dict[str, Any], paths: list[str]) -> None:
    """Copy ``paths`` (in order) into the cache on this server, signed; the trust guard runs again here."""
    for p in paths:
        if not _STORE_PATH.match(p):
            raise HostError(h.name, f"not a store path: {p!r}")  # a plan file is data: check it
    payload = "".join(p + "\n" for p in paths)
    h.run(scripts.push_paths(cache_of(cache, h.host), h.host), stdin=payload, what="nix copy")


@action("binary_cache.build_push")
def build_push(h: HostContext, cache: dict[str, Any], installable: str) -> None:
    """Build ``installable`` on this server and push its closure into the cache, signed."""
    h.run(scripts.build_and_push(cache_of(cache, h.host), h.host, installable), what=f"build {installable}")


@register
class BinaryCachePush(Task):
    """Push store paths or flake outputs (with their closure) into the cache, signed; idempotent."""

    name = "binary_cache.push"
    summary = "copy store paths / a flake output's closure to the cache, signed (present paths skipped)"
    params = {
        **CACHE_PARAMS,
        "paths": Param(list, items=str, help="store paths on the server", check=check_store_paths),
        "paths_file": Param(
            str, help="file on the server listing store paths, one a line", check=check_abs_path
        ),
        "installables": Param(
            list, items=str, help="flake outputs to build on the server, e.g. /srv/repo#hello"
        ),
        "chunk": Param(
            int,
            default=scripts.CHUNK,
            help="paths per change (one progress event each)",
            check=lambda v: None if v > 0 else "must be positive",
        ),
    }

    def validate(self) -> None:
        validate_server(self)
        if not (self.args["paths"] or self.args["paths_file"] or self.args["installables"]):
            raise self.source.error(f"{self.name}: give 'paths', 'paths_file' or 'installables'")
        for i, inst in enumerate(self.args["installables"] or []):
            if not inst or any(ch.isspace() for ch in inst) or inst.startswith("-"):
                raise self.source.error(
                    f"{self.name}: installables[{i}]: invalid installable {inst!r}", "installables", i
                )
        self.spec = cache_spec(self)

    def label(self) -> str:
        return f"{self.name} to {self.spec.name}"

    def targets(self, selected: list[Host]) -> list[Host]:
        return [h for h in selected if h.name == self.args["server"]]

    def fact_requests(self, host: Host) -> list[FactRequest]:
        return [
            FactRequest("stdout", _survey_script(self.spec, host, self.args)),
            FactRequest("file_meta", self.spec.key_file(host)),
        ]

    def plan(self, ctx: PlanContext) -> list[Change]:
        hctx = ctx.hosts.get(self.args["server"])
        if hctx is None:
            return []
        if not hctx.file(self.spec.key_file(hctx.host)).exists:
            raise HostError(
                hctx.name, f"no signing key at {self.spec.key_file(hctx.host)}: run binary_cache.server first"
            )
        missing, present, unbuilt = survey(hctx, self.spec, self.args)
        changes = push_changes(hctx.name, self.spec, missing, len(present), self.name, self.args["chunk"])
        for inst in unbuilt:
            changes.append(
                Change(
                    hctx.name,
                    self.name,
                    f"build {inst} and push its closure to {self.spec.store_dir}, signed",
                    op="binary_cache.build_push",
                    args={"cache": cache_args(self.spec), "installable": inst},
                    action="run",
                )
            )
        for c in changes:
            c.requires = (*c.requires, "local")
        return changes

    def verify(self, ctx: PlanContext, changed: set[str]) -> dict[str, str]:
        hctx = ctx.hosts.get(self.args["server"])
        if hctx is None or hctx.name not in changed:
            return {}
        res = hctx.run(
            _survey_script(self.spec, hctx.host, self.args), check=False, what="survey pushed paths"
        )
        left = [ln for ln in res.stdout.splitlines() if ln.startswith(("missing ", "unbuilt "))]
        return {hctx.name: f"{len(left)} path(s) still not in the cache: {left[0]}"} if left else {}
