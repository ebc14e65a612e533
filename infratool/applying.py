"""Applying a plan: run locks, changes per host in playbook order, verify, deploy confirmation.

The second half of :class:`infratool.runner.Runner` (the first half plans):
kept apart because applying is where a run writes, and its rules (what
blocks what, when a fleet-wide barrier is needed, how a failure is pinned on
one change) read best on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from infratool import deploy, faults, hostlock, plandeps
from infratool.changes import Change, Plan, is_local
from infratool.checkstate import CheckState
from infratool.context import DeferredWriteFailed, DeferredWrites, HostContext, LocalContext
from infratool.errors import InfratoolError
from infratool.facts import FactRequest
from infratool.inventory import Host, Inventory
from infratool.lockedwrites import LockedWrites
from infratool.options import RunOptions
from infratool.playbook import Invocation, Playbook
from infratool.remote import Held, Remote, release_all
from infratool.runresult import HostResult, RunResult
from infratool.secrets.secret import REDACTOR
from infratool.tasks.base import PlanContext, Task

Event = Callable[[str, str, str], None]
"""``on_event(host, status, message)`` for progress displays."""


@dataclass
class _LockPlan:
    """How this apply holds the run locks: taken up front (``held``), or with each ``folded`` host's write."""

    holder: str
    folded: set[str]
    held: dict[str, Held]


def _grouped(
    changes: list[Change],
    back_to_back: Callable[[tuple[int, int], dict[tuple[int, int], list[Change]]], bool],
) -> tuple[dict[tuple[int, int], list[Change]], list[list[tuple[int, int]]]]:
    """Changes by (entry, phase), and those keys in apply order, consecutive back-to-back keys grouped."""
    by_key: dict[tuple[int, int], list[Change]] = {}
    for c in changes:
        by_key.setdefault((c.stage, c.phase), []).append(c)
    groups: list[list[tuple[int, int]]] = []
    for key in sorted(by_key):
        if groups and back_to_back(key, by_key) and back_to_back(groups[-1][-1], by_key):
            groups[-1].append(key)
        else:
            groups.append([key])
    return by_key, groups


class Applying:
    """The apply side of the runner (mixed into :class:`infratool.runner.Runner`, which sets these)."""

    inventory: Inventory
    playbook: Playbook
    options: RunOptions
    on_event: Event
    log: Any
    contexts: dict[str, HostContext]
    local: LocalContext
    state: dict[str, Any]
    checks: CheckState
    _pool: ThreadPoolExecutor
    _targets: list[tuple[Invocation, list[Host]]]
    _requests: dict[tuple[int, str], list[FactRequest]]
    _passed: list[Change]
    _lock: _LockPlan

    def plan_context(self, hosts: dict[str, HostContext]) -> PlanContext:
        """A task's view of this run, over ``hosts`` (planning, verifying, confirming a deploy)."""
        return PlanContext(
            hosts=hosts, local=self.local, inventory=self.inventory, options=self.options, state=self.state
        )

    def apply(self, plan: Plan) -> RunResult:
        """Apply exactly ``plan``; verify what changed; report per host."""
        results = {h: HostResult(h) for h in plan.hosts}
        for host, message in plan.failures.items():
            results.setdefault(host, HostResult(host))
            results[host].status = (
                "refused"
                if host in plan.host_key_refused
                else "unreachable"
                if host in plan.unreachable
                else "stale"
                if host in plan.stale
                else "failed"
            )
            results[host].error = message
        failed: dict[str, str] = dict(plan.failures)
        # Before a generated file is written: a crash from here on leaves the
        # host pending, and the next plan deploys it (deploy/plan.py).
        deploy.mark_pending(self.local.root, {c.deploy for c in plan.changes if c.deploy})
        by_key, groups = _grouped(plan.changes, self._back_to_back)
        holder = hostlock.describe_run(f"run {self.playbook.name}")
        folded = self._folded_lock_hosts(by_key, groups)
        held = self._lock_hosts(plan, failed, holder, skip=folded)
        self._lock = _LockPlan(holder, folded, held)
        try:
            self._apply_plan(plan, by_key, groups, failed, results)
            plandeps.record_checks(
                [c for c in self._passed if c.host not in failed], self.contexts, self._requests, self.checks
            )
        finally:
            # All at once: closing each lock's stdin and waiting for it in
            # turn cost a round trip per host (docs/performance.md).
            release_all(held.values())
        for r in results.values():
            if r.host in failed and r.status not in ("refused", "unreachable", "stale"):
                r.status, r.error = "failed", failed[r.host]
        return RunResult(plan=plan, hosts=results)

    def _folded_lock_hosts(
        self, by_key: dict[tuple[int, int], list[Change]], groups: list[list[tuple[int, int]]]
    ) -> set[str]:
        """Hosts whose run lock rides with their one batched write (:mod:`infratool.lockedwrites`).

        A host qualifies when all its changes fall in one group of entries
        applied back to back (nothing verified after, no deploy, no
        cross-host ``requires``), so its last send is the last thing the run
        does there. Never with ``--wait``: a run holding other hosts' locks
        must not then wait for one (the name-ordered queue of
        :meth:`_lock_hosts` is what keeps two waiting runs from deadlock).
        """
        if self.options.lock_wait:
            return set()
        seen: dict[str, set[int]] = {}
        for i, keys in enumerate(groups):
            for key in keys:
                for c in by_key[key]:
                    seen.setdefault(c.host, set()).add(i)
        return {
            host
            for host, indexes in seen.items()
            if host in self.contexts
            and len(indexes) == 1
            and all(self._back_to_back(key, by_key) for key in groups[next(iter(indexes))])
        }

    def _lock_hosts(self, plan: Plan, failed: dict[str, str], holder: str, skip: set[str]) -> dict[str, Held]:
        """Take the run lock on every host the plan changes (but ``skip``); a host whose lock is refused fails.

        Without a wait, all at once (a busy host is refused immediately, so
        two runs cannot deadlock); with ``--wait``, one host after the other
        in name order, so two waiting runs queue instead of each holding
        what the other waits for.
        """
        names = sorted(
            {
                c.host
                for c in plan.changes
                if c.host in self.contexts and c.host not in failed and c.host not in skip
            }
        )
        held: dict[str, Held] = {}

        def take(name: str) -> None:
            try:
                if self.options.lock_wait:
                    self.on_event(name, "locking", "waiting for the run lock")
                held[name] = hostlock.acquire(self.contexts[name].remote, self.options.lock_wait, holder)
            except InfratoolError as exc:
                message = REDACTOR.redact(str(exc))
                failed[name] = message
                self.log.error("run lock refused", host=name, error=message)
                self.on_event(name, "failed", message)

        if self.options.lock_wait:
            for name in names:
                take(name)
        else:
            list(self._pool.map(take, names))
        return held

    def _apply_plan(
        self,
        plan: Plan,
        by_key: dict[tuple[int, int], list[Change]],
        groups: list[list[tuple[int, int]]],
        failed: dict[str, str],
        results: dict[str, HostResult],
    ) -> None:
        last_group = {key[0]: i for i, keys in enumerate(groups) for key in keys}
        for i, keys in enumerate(groups):
            by_host: dict[str, list[Change]] = {}
            for key in keys:
                for c in by_key[key]:
                    by_host.setdefault(c.host, []).append(c)
            list(
                self._pool.map(
                    lambda item: self._apply_host(item[0], item[1], failed, results, plan.changes),
                    by_host.items(),
                )
            )
            for stage in sorted({key[0] for key in keys}):
                if last_group[stage] == i and stage < len(self._targets):
                    self._verify(stage, plan, failed, results)

    def _back_to_back(self, key: tuple[int, int], by_key: dict[tuple[int, int], list[Change]]) -> bool:
        """Whether the changes of ``key`` (entry, phase) may run on each host without a fleet-wide barrier.

        Only for entries of host-local tasks (their changes touch their own
        host only) with nothing to verify, no phases, no cross-host
        ``requires`` and no deploy: then running a host's entries back to
        back changes nothing another host could observe, and lets the
        host's writes go out together.
        """
        stage, phase = key
        if phase != 0 or stage >= len(self._targets):
            return False
        task = self._targets[stage][0].task
        if not task.host_local:
            return False
        if type(task).verify is not Task.verify:
            return False
        return all(not is_local(c.host) and not c.requires and not c.deploy for c in by_key[key])

    def _apply_host(
        self,
        host: str,
        changes: list[Change],
        failed: dict[str, str],
        results: dict[str, HostResult],
        plan_changes: list[Change] | None = None,
    ) -> None:
        ctx = self.local if is_local(host) else self.contexts.get(host)
        result = results.setdefault(host, HostResult(host))
        # On a host, changes go through a view that queues file writes and
        # sends them in one script (at the end, or before any other command).
        view: DeferredWrites | HostContext | LocalContext | None = ctx
        if isinstance(ctx, HostContext):
            lock = self._lock
            if host in lock.folded:
                view = LockedWrites(ctx, lock.holder, lambda held: lock.held.__setitem__(host, held))
            else:
                view = DeferredWrites(ctx)
        done: list[Change] = []  # applied, or queued and waiting to be sent
        current: Change | None = None
        try:
            for change in changes:
                blocked = [h for h in (host, *change.requires) if h in failed]
                if blocked or ctx is None:
                    self.on_event(
                        host, "skipped", f"{change.description} (after failure on {', '.join(blocked)})"
                    )
                    continue
                self.on_event(host, "applying", change.description)
                current = change
                if isinstance(view, DeferredWrites):
                    view.tag = change
                change.execute(view)
                if isinstance(view, DeferredWrites) and view.failed_tag is not None:
                    raise DeferredWriteFailed(view.failed_tag, InfratoolError("write failed"))
                if change.op == deploy.OP:
                    self._confirm_deploy(host, change, plan_changes, result)
                done.append(change)
            current = None
            if isinstance(view, LockedWrites):
                view.finish()
            elif isinstance(view, DeferredWrites):
                view.flush()
        except Exception as exc:
            culprit, cause = current, exc
            if isinstance(exc, DeferredWriteFailed):
                culprit, cause = exc.tag, exc.cause
            applied = done
            for n, c in enumerate(done):
                if c is culprit:
                    applied = done[:n]
                    break
            self._record_applied(result, applied)
            task = culprit.task if isinstance(culprit, Change) else "apply"
            message = (
                REDACTOR.redact(str(cause))
                if isinstance(cause, InfratoolError)
                else f"internal error in {task}: {type(cause).__name__}: {REDACTOR.redact(str(cause))}"
            )
            if isinstance(culprit, Change) and culprit.is_check:
                message = f"check failed: {message}"
            failed[host] = message
            what = culprit.description if isinstance(culprit, Change) else "apply"
            self.log.error("change failed", host=host, change=what, error=message)
            self.on_event(host, "failed", message)
            return
        self._record_applied(result, done)
        if result.applied:
            self.on_event(host, "changed", f"{len(result.applied)} change(s) applied")

    def _confirm_deploy(
        self, host: str, change: Change, plan_changes: list[Change] | None, result: HostResult
    ) -> None:
        """After ``host``'s deploy activated: the deferred verify steps over a new connection, then commit.

        The per-stage verify cannot check a NixOS host before its deploy
        (its changes are generated files); here each entry that changed the
        host verifies it, through a fresh connection on the pinned key, and
        the host's watchdog commits or rolls back on the outcome.
        Raises DeployFailed (the host fails, the others go on).
        """
        stages = sorted({c.stage for c in plan_changes or () if c.deploy == host and c.op != deploy.OP})
        if not stages:  # a deploy left pending by an earlier run: every entry targeting the host checks it
            stages = [
                i for i, (_, targets) in enumerate(self._targets) if any(h.name == host for h in targets)
            ]
        proofs: list[str] = []

        def checks(remote: Remote) -> list[str]:
            proofs.clear()  # the engine retries failing checks: keep what the last attempt proved
            old = self.contexts[host]
            fresh = HostContext(host=old.host, facts=old.facts, remote=remote)
            problems: list[str] = []
            for stage in stages:
                inv, targets = self._targets[stage]
                hosts = {h.name: self.contexts[h.name] for h in targets if h.name in self.contexts}
                hosts[host] = fresh
                ctx = self.plan_context(hosts)
                self.log.info("verify after deploy", task=inv.task.name, step=inv.label, host=host)
                found = inv.task.verify(ctx, {host})
                if host in found:
                    problems.append(f"{inv.label}: {found[host]}")
                proofs.extend(ctx.proven.get(host, []))
            return problems

        self.on_event(host, "confirming", "verify over a new connection, then commit")
        deploy.confirm_deploy(self.contexts[host].host, checks, int(change.args.get("confirm_timeout", 30)))
        deploy.clear_pending(self.local.root, host)
        result.verified.extend(proofs)
        result.verified.append("deploy committed (switch-to-configuration boot)")

    def _record_applied(self, result: HostResult, changes: list[Change]) -> None:
        for change in changes:
            if change.is_check:
                # A passing check proved something and changed nothing.
                result.verified.extend(change.proved or [change.description])
                self._passed.append(change)
                continue
            if change.idle is not None:
                # A conditional change that found nothing to do: listed apart, never "applied".
                result.nothing_to_do.append(f"{change.description}: {change.idle}")
                faults.change_applied()  # the fault points count changes run, whatever they did
                continue
            result.applied.append(change.description)
            faults.change_applied()
            result.status = "changed"

    def _verify(self, stage: int, plan: Plan, failed: dict[str, str], results: dict[str, HostResult]) -> None:
        inv, targets = self._targets[stage]
        changed = {
            c.host for c in plan.changes if c.stage == stage and not c.is_check and c.host not in failed
        }
        # A NixOS host with a deploy in this plan is verified after its deploy, over a new
        # connection, before its watchdog commits (_confirm_deploy): not here, on the old system.
        deferred = {c.host for c in plan.changes if c.op == deploy.OP}
        changed -= deferred
        if not changed:
            return
        hosts = {
            h.name: self.contexts[h.name] for h in targets if h.name in self.contexts and h.name not in failed
        }
        ctx = self.plan_context(hosts)
        # -v: which check runs on which hosts, and what it proved.
        self.log.info("verify", task=inv.task.name, step=inv.label, hosts=sorted(changed))
        try:
            problems = inv.task.verify(ctx, changed)
        except InfratoolError as exc:
            problems = {h: str(exc) for h in changed}
        for host in sorted(changed - set(problems)):
            self.log.info(
                "verified", task=inv.task.name, step=inv.label, host=host, proved=ctx.proven.get(host)
            )
        for host, proofs in ctx.proven.items():
            if host not in problems and host in results:
                results[host].verified.extend(proofs)
        for host, message in problems.items():
            if host in deferred:  # a check of a host whose new system is not deployed yet
                self.log.info("verify deferred until after deploy", task=inv.task.name, host=host)
                continue
            self.log.warning("verify failed", task=inv.task.name, step=inv.label, host=host, error=message)
            message = REDACTOR.redact(f"verify failed: {message}")
            failed.setdefault(host, message)
            self.on_event(host, "failed", message)
