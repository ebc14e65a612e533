"""The builder side of ``remote_builders.setup``: login user, nix-daemon, trusted-users, authorized_keys.

Phase 1 authorizes the clients' keys (restricted to the Nix daemon, as an
unprivileged login user); a rotated client's old key stays next to its new
one until the client has the new key, and phase 3 revokes it.
"""

from __future__ import annotations

import shlex

from infratool.changes import Change
from infratool.context import HostContext
from infratool.errors import HostError
from infratool.facts import FACTS, FactRequest
from infratool.tasks.lib.files import file_changes
from infratool.tasks.lib.nixconf import edit_conf
from infratool.tasks.remote_builders import filetext as render
from infratool.tasks.remote_builders.common import (
    DAEMON_RUNNING,
    PHASE_BUILDER,
    PHASE_REVOKE,
    home_command,
    restart_daemon,
    script_change,
    tag,
)
from infratool.tasks.remote_builders.filetext import NIX_CONF
from infratool.tasks.remote_builders.keys import ClientKey
from infratool.tasks.remote_builders.spec import Builder, Topology

USER_HOME_ROOT = "/var/lib"
"""Where a login user infratool creates on a builder gets its home."""


def login_home(bctx: HostContext, builder: Builder) -> tuple[str, bool]:
    """The login user's home on a builder, and whether the user exists yet."""
    home = bctx.facts.get("stdout", home_command(builder.user))
    if home and home.strip():
        return home.strip(), True
    return f"{USER_HOME_ROOT}/{builder.user}", False


def user_changes(bctx: HostContext, task: str, builder: Builder, path: str) -> list[Change]:
    """Create the dedicated login user (and its ~/.ssh) unless both are there already."""
    home, exists = login_home(bctx, builder)
    if exists and bctx.file(path).exists:
        return []
    user = shlex.quote(builder.user)
    # '*' is no password at all (sshd refuses a locked '!' account without PAM);
    # a shell only so sshd can run the forced command. Another run (or host
    # sharing /etc/passwd) may have created the user meanwhile: that is fine.
    script = "\n".join(
        [
            "set -e",
            f"if ! getent passwd {user} >/dev/null; then",
            f"  useradd --system --user-group --home-dir {shlex.quote(home)} --shell /bin/sh "
            f"--password '*' {user} || getent passwd {user} >/dev/null",
            "fi",
            f"mkdir -p {shlex.quote(home + '/.ssh')}",
            f"chown {user}: {shlex.quote(home)} {shlex.quote(home + '/.ssh')}",
            f"chmod 0755 {shlex.quote(home)}",
            f"chmod 0700 {shlex.quote(home + '/.ssh')}",
        ]
    )
    what = "create" if not exists else "prepare ~/.ssh of"
    change = script_change(
        bctx.name,
        task,
        f"{what} the builder login user {builder.user} (unprivileged; clients' keys run only the "
        "Nix daemon as this user)",
        script,
        f"create user {builder.user}",
        PHASE_BUILDER,
    )
    change.action = "create"
    return [change]


def daemon_changes(bctx: HostContext, task: str, builder: Builder) -> list[Change]:
    """Make sure a nix-daemon runs: the unprivileged login reaches the store only through it."""
    if bctx.facts.get("succeeds", DAEMON_RUNNING):
        return []
    if not bctx.facts.get("systemd"):
        raise HostError(
            builder.name,
            "no nix-daemon listens on /nix/var/nix/daemon-socket/socket: the builder login "
            f"{builder.user!r} is not root and reaches the Nix store only through the daemon; start it",
        )
    return [
        script_change(
            bctx.name,
            task,
            "start nix-daemon (the builder login user reaches the store through it)",
            "systemctl enable --now nix-daemon.socket || systemctl enable --now nix-daemon.service",
            "start nix-daemon",
            PHASE_BUILDER,
        )
    ]


def authorized_keys_path(bctx: HostContext, builder: Builder) -> str:
    """Path of the login user's authorized_keys on a builder (its state made known to ``bctx``)."""
    home, _ = login_home(bctx, builder)
    path = f"{home}/.ssh/authorized_keys"
    request = FactRequest("file", path)
    if bctx.facts.missing([request]):
        # Known only now that the home directory is: read it like a fact (read-only).
        res = bctx.run(FACTS["file"].command(path), check=False, what=f"read {path}")
        bctx.facts.update({request: FACTS["file"].parse(res.stdout, res.exited)})
    return path


def plan_builder(
    bctx: HostContext,
    task: str,
    topo: Topology,
    builder: Builder,
    keys: dict[str, ClientKey],
    installed: dict[str, bool | None],
    fresh: tuple[str, ...],
) -> list[Change]:
    changes: list[Change] = []
    conf = bctx.file(NIX_CONF)
    text = (conf.text or "") if conf.exists else ""
    trusted = render.trusted_users_needed(text, builder.user)
    if trusted is not None:
        new = edit_conf(text, {"trusted-users": trusted})
        changes += tag(
            file_changes(bctx, task, NIX_CONF, new.encode(), None if conf.exists else 0o644, None, None),
            f"make {builder.user} a trusted Nix user",
            PHASE_BUILDER,
        )
        changes += restart_daemon(bctx, task, "trusted-users", PHASE_BUILDER, ())
    path = authorized_keys_path(bctx, builder)
    changes = user_changes(bctx, task, builder, path) + daemon_changes(bctx, task, builder) + changes
    state = bctx.file(path)
    if state.exists and state.content is None:
        raise HostError(builder.name, f"{path} is not a readable regular file of sane size")
    current = (state.text or "") if state.exists else ""
    old = render.managed_lines(current)
    desired = [render.authorized_line(topo.protocol, keys[c.name].public, c.name) for c in topo.clients]
    # A rotated client keeps its old key (listed right after the new one)
    # until it has the new one (phase 2); phase 3 revokes it.
    step_lines: list[str] = []
    keep: list[str] = []
    for c, line in zip(topo.clients, desired, strict=True):
        step_lines.append(line)
        if installed[c.name] is not True:
            new_blob = render.key_blob(keys[c.name].public)
            stale = [k for k in old.get(c.name, []) if render.line_key(k) != new_blob]
            keep += stale
            step_lines += stale
    mode, owner = 0o600, builder.user
    step = render.replace_managed(current, step_lines)
    final = render.replace_managed(current, desired)
    clients = {c.name for c in topo.clients}
    added = [c.name for c, line in zip(topo.clients, desired, strict=True) if line not in old.get(c.name, [])]
    removed = sorted(set(old) - clients)
    if step != current:
        why = []
        if added:
            why.append(
                f"authorize builder key of {', '.join(added)} ({render.REMOTE_COMMAND[topo.protocol]} only)"
            )
        if removed:
            why.append(f"revoke key of removed client {', '.join(removed)}")
        changes += tag(
            file_changes(bctx, task, path, step.encode(), mode, owner, None),
            "; ".join(why) or "restore managed builder keys",
            PHASE_BUILDER,
            fresh,
        )
    if final != step:
        rotated = sorted({render.owner_of(line) or "" for line in keep})
        changes += tag(
            file_changes(bctx, task, path, final.encode(), mode, owner, None),
            f"revoke old builder key of {', '.join(rotated)}",
            PHASE_REVOKE,
            fresh,
        )
    return changes
