"""The deploy engine: build, copy, activate under a watchdog, confirm over a new connection, commit.

One deploy is one change **on its host** (``op="nixos.deploy"``), applied by
the runner in its pool like any other host change, so NixOS hosts deploy in
parallel up to ``--forks`` and a failure belongs to its host:

* :func:`build` — ``nix build --no-link --json`` of
  ``nixosConfigurations.<host>.config.system.build.toplevel`` from the fleet
  flake, on the controller or (``--build-on``) in a builder's store;
* :func:`copy` — the missing paths of the closure, ``nix-store --export``
  streamed into ``nix-store --import`` over the run's own connection (from a
  ``--build-on`` builder: ``nix copy`` with ``NIX_SSHOPTS`` from the
  inventory, :mod:`infratool.nixssh`); nothing but one check when the host
  already has them (one round trip);
* :func:`activate` — starts the host's watchdog (:mod:`.hostside`), which
  sets the system profile and runs ``switch-to-configuration test``;
* :func:`confirm` / :func:`abort` — over a **new** connection (pinned key):
  after the tasks' checks pass, the watchdog commits (``boot``); otherwise it
  rolls back. When the controller is gone or the host cannot be reached, the
  watchdog rolls back by itself after ``confirm_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infratool import log
from infratool.changes import action
from infratool.errors import CommandFailed, ConnectError, HostError, HostKeyError, InfratoolError
from infratool.inventory import Host
from infratool.remote import Remote
from infratool.secrets.secret import REDACTOR

from . import hostside
from .build import build, copy, host_from_args

OP = "nixos.deploy"
"""The action of a deploy change."""
DEFAULT_CONFIRM_TIMEOUT = 30
"""Seconds the host waits for the controller's confirmation (deploy-rs's default too)."""
CHECK_SHARE = 0.6
"""Failing checks are retried during this share of the confirm timeout (the rest is for confirming)."""

_log = log.get_logger("infratool.deploy")


class DeployFailed(HostError):
    """A deploy did not commit; ``rolled_back`` says whether the host is back on its previous system."""

    def __init__(self, host: str, message: str, rolled_back: bool = True) -> None:
        self.rolled_back = rolled_back
        super().__init__(host, message)


@dataclass(frozen=True)
class Activation:
    """What the watchdog said once ``switch-to-configuration test`` was over."""

    word: str
    """activated, or a final word (rolled-back, failed) when activation failed."""
    detail: str

    @classmethod
    def parse(cls, line: str) -> Activation:
        """``"rolled-back reason ..."`` → Activation("rolled-back", "reason ...")."""
        word, _, detail = line.strip().partition(" ")
        return cls(word or "none", detail)

    @property
    def final(self) -> bool:
        """True when the watchdog has exited (nothing left to confirm)."""
        return self.word in hostside.FINAL


def activate(remote: Any, toplevel: str, confirm_timeout: int) -> Activation:
    """Start the watchdog on the host and wait until ``switch-to-configuration test`` is over.

    A connection lost meanwhile (the new generation restarted sshd) is not
    an answer: the result is then ``activating``, and :func:`confirm` finds
    out over a new connection.
    """
    script = hostside.start_script(toplevel, confirm_timeout)
    try:
        res = remote.run(script, check=False, what="activate the new system")
    except ConnectError as exc:
        return Activation("activating", f"connection lost during activation: {exc}")
    if not res.ok:
        raise CommandFailed(remote.host.name, "start the deploy watchdog", res.exited, res.stderr)
    return Activation.parse(res.stdout.splitlines()[-1] if res.stdout.strip() else "none")


def reconnect(
    host: Host, deadline: float, connect_timeout: float = 5.0, failed: list[str] | None = None
) -> Remote:
    """A **new** connection to ``host`` (pinned key), retried until ``deadline`` (monotonic).

    Each failed attempt is appended to ``failed`` (when given), so a caller can
    say that the host did not answer at first.
    """
    last: Exception | None = None
    while True:
        remote = Remote(host, connect_timeout=connect_timeout)
        try:
            remote.connect()
            return remote
        except HostKeyError:
            raise  # a different key after a deploy is an attack or a mistake, never retried
        except (ConnectError, HostError) as exc:
            last = exc
            remote.close()
            if failed is not None:
                failed.append(str(exc))
        if time.monotonic() >= deadline:
            raise ConnectError(host.name, f"no answer on the pinned key: {last}")
        time.sleep(0.5)


def finish(remote: Remote, verdict: str | None, confirm_timeout: int) -> Activation:
    """Confirm (``verdict`` None) or abort with ``verdict``; the watchdog's final status."""
    wait = confirm_timeout + 120.0  # commit or rollback includes a switch-to-configuration
    script = hostside.confirm_script(wait) if verdict is None else hostside.abort_script(verdict, wait)
    res = remote.run(script, check=False, what="confirm the deploy" if verdict is None else "roll back")
    return Activation.parse(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "none")


def wait_final(host: Host, started: float, confirm_timeout: int) -> Activation:
    """After losing the host: wait for it to roll itself back and answer again; its final status."""
    deadline = started + confirm_timeout + 120.0
    remote = reconnect(host, deadline)
    try:
        res = remote.run(hostside.status_script(max(0.0, deadline - time.monotonic())), check=False)
        return Activation.parse(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "none")
    finally:
        remote.close()


@action(OP)
def deploy_action(
    ctx: Any,
    flake: str,
    confirm_timeout: int = DEFAULT_CONFIRM_TIMEOUT,
    build_on: dict[str, Any] | None = None,
    files: list[str] | None = None,
    batch: dict[str, Any] | None = None,
) -> None:
    """Build, copy and activate the host's new system under its watchdog.

    Leaves the host activated and its watchdog waiting for
    :func:`confirm_deploy` (the runner calls it right after, over a new
    connection, with the tasks' checks). Raises :class:`DeployFailed` when
    activation failed (the watchdog then already rolled back). ``files``
    (the generated files that changed) is for the plan's reader only;
    ``batch`` names the hosts deployed together (built in one ``nix build``).
    """
    host: Host = ctx.host
    builder = host_from_args(build_on) if build_on else None
    toplevel = build(Path(flake), host, builder, batch)
    copied = copy(ctx.remote, host, toplevel, builder)
    _log.info("deploy: copied" if copied else "deploy: closure already there", host=host.name, path=toplevel)
    result = activate(ctx.remote, toplevel, confirm_timeout)
    _log.info("deploy: activation over", host=host.name, status=result.word)
    if result.final:
        raise DeployFailed(host.name, f"the host {_said(result)}", result.word == "rolled-back")


Checks = Callable[[Remote], list[str]]
"""``checks(new_connection) -> problems``: the verify steps of the tasks that changed the host."""


def confirm_deploy(host: Host, checks: Checks, confirm_timeout: int) -> str:
    """Over a **new** connection: run ``checks``, then confirm (commit) or abort (roll back).

    Returns the watchdog's final word on success (``committed``); raises
    :class:`DeployFailed` with what happened otherwise. When the new system
    does not answer on the pinned key, waits for the host to roll itself
    back and answer again, and says so.
    """
    started = time.monotonic()
    unanswered: list[str] = []
    try:
        remote = reconnect(host, started + max(1.0, confirm_timeout * 0.8), failed=unanswered)
    except ConnectError as exc:
        final = wait_final(host, started, confirm_timeout)
        raise DeployFailed(
            host.name,
            f"the new system did not answer on the pinned key ({exc}); the host {_said(final)}",
            final.word == "rolled-back",
        ) from None
    try:
        status = remote.run(
            hostside.status_script(), check=False, what="read the deploy status"
        ).stdout.strip()
        current = Activation.parse(status.splitlines()[-1] if status else "none")
        if current.final:
            # Answering only after the watchdog gave up: the new system did not answer.
            lost = (
                f"the new system did not answer on the pinned key ({unanswered[-1]}); " if unanswered else ""
            )
            raise DeployFailed(host.name, f"{lost}the host {_said(current)}", current.word == "rolled-back")
        problems = _run_checks(host, checks, remote, started + confirm_timeout * CHECK_SHARE)
        verdict = REDACTOR.redact("; ".join(problems))[:300] if problems else None
        final = finish(remote, verdict, confirm_timeout)
    finally:
        remote.close()
    if final.word != "committed":
        if verdict and final.word == "rolled-back":  # the watchdog's reason repeats the verdict
            raise DeployFailed(
                host.name, f"verify failed: {verdict}; the host rolled back to its previous system"
            )
        reason = f"verify failed: {verdict}; " if verdict else ""
        raise DeployFailed(host.name, f"{reason}the host {_said(final)}", final.word == "rolled-back")
    return final.word


def _run_checks(host: Host, checks: Checks, remote: Remote, until: float) -> list[str]:
    """``checks(remote)``, again every 2 s while they fail and ``until`` (monotonic) is not reached.

    Hosts deploy in parallel: a client's check (a build through the
    builder, a substitution from the cache) may run before the builder or
    cache server it uses finished its own activation. Retrying inside the
    confirm window lets it settle; a real failure still fails, just later.
    """
    while True:
        try:
            problems = checks(remote)
        except Exception as exc:  # a check that crashes is a failed check, and the host rolls back
            problems = [error_text(exc)]
        if not problems or time.monotonic() + 2.0 >= until:
            return problems
        _log.info(
            "deploy: checks failed, retrying within the confirm window", host=host.name, problems=problems
        )
        time.sleep(2.0)


def _said(status: Activation) -> str:
    if status.word == "rolled-back":
        return f"rolled back ({status.detail})"
    if status.word == "failed":
        return f"could not roll back: {status.detail}"
    return f"reports {status.word} {status.detail}".strip()


def error_text(exc: BaseException) -> str:
    """A one-line message for a failed deploy (secrets redacted)."""
    if isinstance(exc, InfratoolError):
        return REDACTOR.redact(str(exc))
    return REDACTOR.redact(f"internal error in deploy: {type(exc).__name__}: {exc}")
