"""Generated files in the flake repo: the change that writes one, and its action."""

from __future__ import annotations

from infratool.changes import LOCAL, Change, action
from infratool.context import LocalContext
from infratool.diffs import text_diff


def generated_path(host: str, module: str) -> str:
    """Repo-relative path of a generated module for a NixOS host."""
    return f"hosts/{host}/generated/{module}.nix"


def local_file_change(
    local: LocalContext, task: str, rel: str, content: str, deploy: str | None
) -> list[Change]:
    """A change writing a generated file in the flake repo, if its content differs."""
    new = content.encode()
    old = local.current(rel)
    if old == new:
        return []
    local.plan_write(rel, new)
    diff = text_diff(old.decode() if old is not None else None, content, rel)
    return [
        Change(
            LOCAL,
            task,
            f"{'update' if old is not None else 'create'} {rel}",
            op="local.write",
            args={"rel": rel, "content": new},
            diff=diff,
            deploy=deploy,
            action="update" if old is not None else "create",
        )
    ]


@action("local.write")
def write_local(local: LocalContext, rel: str, content: bytes) -> None:
    """Write a generated file of the flake repo (``rel`` is relative to its root)."""
    local.put_file(rel, content)
