"""The runner: connect → gather facts → plan → (confirm) → apply → verify.

Hosts are handled in parallel by a bounded pool (``--forks``). Each host gets
one SSH connection for the whole run and one round trip for its facts. A host
that cannot be reached, refuses our pinned key or fails a change is reported
and dropped; the rest of the fleet goes on. Changes apply in playbook order;
within one playbook entry, lower phases finish on every host before higher
ones start (a builder before its clients).

Planning lives here; applying a plan in :mod:`infratool.applying` (mixed
into :class:`Runner`), and what a run reports in :mod:`infratool.runresult`.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from infratool import deploy, log, plandeps, preflight
from infratool.applying import Applying, Event
from infratool.changes import Change, Plan, is_local
from infratool.checkstate import CheckState
from infratool.context import HostContext, LocalContext
from infratool.errors import ConnectError, HostError, HostKeyError, InfratoolError, InputError
from infratool.facts import (
    BASE_FACTS,
    DESCRIBE_FACTS,
    FactCache,
    FactRequest,
    build_script,
    parse_output,
)
from infratool.inventory import Host, Inventory
from infratool.options import RunOptions
from infratool.playbook import Playbook
from infratool.remote import Remote
from infratool.runresult import HostResult, RunResult, plan_exit_code
from infratool.secrets.secret import REDACTOR
from infratool.tasks.base import HostTask, PlanContext, Task


class Runner(Applying):
    """Plans and applies one playbook against an inventory (applying: :mod:`infratool.applying`)."""

    def __init__(
        self, inventory: Inventory, playbook: Playbook, options: RunOptions, on_event: Event | None = None
    ) -> None:
        self.inventory = inventory
        self.playbook = playbook
        self.options = options
        self.on_event = on_event or (lambda host, status, message: None)
        self.log = log.get_logger("infratool.runner")
        self.contexts: dict[str, HostContext] = {}
        self.local = LocalContext(inventory.flake)
        self.state: dict[str, Any] = {}
        self.failures: dict[str, str] = {}
        self.refused: set[str] = set()
        self.unreachable: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=max(1, options.forks), thread_name_prefix="host")
        self._targets = [(inv, inv.hosts(inventory, options.limit)) for inv in playbook.invocations]
        self._requests: dict[tuple[int, str], list[FactRequest]] = {}
        """(playbook entry, host) → the facts that entry requested there (what its changes depend on)."""
        self.checks = CheckState(inventory.path)
        self._passed: list[Change] = []

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Close every connection and the pool."""
        for ctx in self.contexts.values():
            ctx.remote.close()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hosts(self) -> list[Host]:
        """Every host any invocation targets, in inventory order."""
        names = {h.name for _, hosts in self._targets for h in hosts}
        return [h for h in self.inventory if h.name in names]

    # -- connect + facts ----------------------------------------------------

    def gather(self, hosts: Iterable[Host] | None = None) -> dict[str, HostContext]:
        """Connect to ``hosts`` (default: all targets) and gather their facts in parallel."""
        hosts = list(hosts if hosts is not None else self.hosts)
        preflight.check_hosts(self.inventory, hosts)  # local mistakes: exit 3 before any connection
        # A run gathers the cheap base facts plus what its tasks ask for; with
        # no tasks (`infratool facts`), the full description of each host.
        base = BASE_FACTS if self._targets else DESCRIBE_FACTS
        requests: dict[str, list[FactRequest]] = {h.name: list(base) for h in hosts}
        for stage, (inv, targets) in enumerate(self._targets):
            for h in targets:
                if h.name in requests:
                    wanted = inv.task.fact_requests(h)
                    self._requests[(stage, h.name)] = wanted
                    requests[h.name].extend(wanted)
        list(self._pool.map(lambda h: self._open(h, requests[h.name]), hosts))
        return self.contexts

    def _open(self, host: Host, requests: list[FactRequest]) -> None:
        self.on_event(host.name, "connecting", f"{host.user}@{host.address}")
        remote = Remote(host, self.options.connect_timeout, self.options.command_timeout)
        try:
            remote.connect()
            facts = FactCache(host.name)
            script, marker, ordered = build_script(requests)
            res = remote.run(script, check=False, what="gather facts")
            facts.update(parse_output(res.stdout, marker, ordered))
            missing = facts.missing(ordered)
            if missing:
                raise HostError(host.name, f"fact gathering failed ({missing[0].name}): {res.stderr.strip()}")
        except HostError as exc:
            remote.close()
            self._fail(host.name, exc)
            return
        except Exception as exc:  # a bug must cost one host, not the fleet
            remote.close()
            self._fail(host.name, HostError(host.name, f"internal error: {type(exc).__name__}: {exc}"))
            return
        self.contexts[host.name] = HostContext(host=host, facts=facts, remote=remote)
        self.on_event(host.name, "connected", f"{len(ordered)} facts")

    def _fail(self, host: str, exc: BaseException) -> None:
        message = REDACTOR.redact(str(exc))
        if isinstance(exc, HostKeyError):
            self.refused.add(host)
        elif isinstance(exc, ConnectError):
            self.unreachable.add(host)
        self.failures.setdefault(host, message)
        self.log.info("host failed", host=host, error=message)
        self.on_event(host, "refused" if isinstance(exc, HostKeyError) else "failed", message)

    # -- plan ---------------------------------------------------------------

    def plan(self) -> Plan:
        """Gather facts and compute every change (read-only)."""
        self.gather()
        changes: list[Change] = []
        reports: dict[str, dict[str, Any]] = {}
        for stage, (inv, targets) in enumerate(self._targets):
            hosts = {h.name: self.contexts[h.name] for h in targets if h.name in self.contexts}
            ctx = self.plan_context(hosts)
            planned = self._plan_task(inv.task, ctx)
            for target, message in ctx.failures.items():
                self._fail(target, InfratoolError(message))
            for host, data in ctx.reports.items():
                reports.setdefault(host, {})[inv.task.name] = data
            for change in planned:
                change.stage = stage
                change.task = change.task or inv.label
            changes.extend(planned)
        facts = plandeps.stamp_facts(
            changes,
            lambda stage, host: self._host_hashes(stage, host),
            plandeps.local_hashes(self.local, self.state),
        )
        changes = plandeps.needed_checks(changes, self.checks)
        changes.extend(self._deploy_changes(changes))
        names = [h.name for h in self.hosts]
        # Local targets: the flake repo, and units of local work kept apart so
        # one failing (say, one secret's rotation) does not skip the others.
        names += list(dict.fromkeys(c.host for c in changes if is_local(c.host) and c.host not in names))
        names += [t for t in self.failures if is_local(t) and t not in names]
        for name in names:
            if not is_local(name) and name not in self.failures:
                count = sum(1 for c in changes if c.host == name)
                self.on_event(name, "planned", f"{count} change(s)")
        return Plan(
            hosts=names,
            changes=changes,
            failures=dict(self.failures),
            host_key_refused=set(self.refused),
            unreachable=set(self.unreachable),
            facts={t: facts[t] for t in dict.fromkeys(c.host for c in changes) if t in facts},
            reports=reports,
        )

    def _host_hashes(self, stage: int, host: str) -> dict[str, str]:
        ctx = self.contexts.get(host)
        return ctx.facts.hashes(self._requests.get((stage, host), [])) if ctx is not None else {}

    def _plan_task(self, task, ctx: PlanContext) -> list[Change]:
        """Plan one playbook entry; any exception fails the host(s) it came from, not the run.

        Host-local tasks plan each host on its own (a :class:`HostTask` in the
        pool, others with a context narrowed to that host), so an exception,
        whatever its type, drops exactly the host being planned. A task
        spanning hosts fails the host a HostError names, else all its hosts.
        """
        if isinstance(task, HostTask) or task.host_local:

            def one(hctx: HostContext) -> list[Change]:
                # The one per-host path: the task sees this host only, and
                # whatever it raises costs this host only.
                narrow = replace(ctx, hosts={hctx.name: hctx}, failures={})
                try:
                    return task.plan(narrow)
                except InputError:
                    raise  # bad input (say, no usable age identity) stops the run once: exit 3
                except Exception as exc:
                    self._drop(hctx.name, _planning_error(hctx.name, task, exc))
                    return []
                finally:
                    ctx.failures.update(narrow.failures)

            hosts = list(ctx.hosts.values())
            # HostTasks plan in the pool; other host-local tasks one host at a time
            # (their plan() may share per-run state that is not thread-safe).
            chunks = self._pool.map(one, hosts) if isinstance(task, HostTask) else map(one, hosts)
            return [c for chunk in chunks for c in chunk]
        try:
            return task.plan(ctx)
        except InputError:
            raise  # bad input stops the run once (exit 3), not once per host
        except HostError as exc:
            self._drop(exc.host, exc)
        except Exception as exc:
            for name in ctx.hosts:
                self._drop(name, _planning_error(name, task, exc))
        return []

    def _drop(self, host: str, exc: BaseException) -> None:
        self._fail(host, exc)
        ctx = self.contexts.pop(host, None)
        if ctx:
            ctx.remote.close()

    def _deploy_changes(self, changes: list[Change]) -> list[Change]:
        """One deploy per NixOS host whose generated configuration changed (see :mod:`infratool.deploy`)."""
        if not self.options.deploy:
            return []
        return deploy.deploy_changes(
            changes,
            self.inventory,
            targets=set(self.contexts),
            stage=len(self._targets),
            confirm_timeout=self.options.confirm_timeout,
            build_on=self.options.build_on,
        )

    # -- saved plans ----------------------------------------------------------

    def load_saved(self, saved: Plan) -> Plan:
        """A saved plan made applicable: connect, re-read its facts, refuse where they drifted.

        ``saved`` holds the changes (args unsealed) and the fact digests of
        the plan file. Every target host is connected to and its facts
        gathered as planning would; a target whose recorded facts differ now
        is **stale** (:func:`infratool.plandeps.stale_targets`): refused with
        the facts that changed, nothing applied there (changes requiring it
        are skipped). The rest apply exactly as saved.
        """
        self.gather()
        stale = plandeps.stale_targets(saved, self.contexts, self.local)
        for target, message in stale.items():
            self.log.warning("plan is stale", host=target, error=message)
            self.on_event(target, "stale", message)
        names = list(dict.fromkeys([*saved.hosts, *(c.host for c in saved.changes)]))
        return Plan(
            hosts=names,
            changes=saved.changes,
            failures={**self.failures, **stale},
            host_key_refused=set(self.refused),
            unreachable=set(self.unreachable),
            stale=set(stale),
            facts=saved.facts,
        )


def _planning_error(host: str, task: Task, exc: BaseException) -> InfratoolError:
    """``exc`` from planning ``task`` on ``host`` as an error that fails that host."""
    if isinstance(exc, InfratoolError):
        return exc
    return HostError(host, f"internal error planning {task.label()}: {type(exc).__name__}: {exc}")


__all__ = ["Event", "HostResult", "RunResult", "Runner", "is_local", "plan_exit_code"]
