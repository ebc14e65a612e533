"""The runner: connect → gather facts → plan → (confirm) → apply → verify.

Hosts are handled in parallel by a bounded pool (``--forks``). Each host gets
one SSH connection for the whole run and one round trip for its facts. A host
that cannot be reached, refuses our pinned key or fails a change is reported
and dropped; the rest of the fleet goes on. Changes apply in playbook order;
within one playbook entry, lower phases finish on every host before higher
ones start (a builder before its clients).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from infratool import deploy, faults, hostlock, log, plandeps, preflight
from infratool.changes import Change, Plan, is_local
from infratool.checkstate import CheckState
from infratool.context import DeferredWriteFailed, DeferredWrites, HostContext, LocalContext
from infratool.errors import (
    EXIT_CHANGES,
    EXIT_FAILED,
    EXIT_HOSTKEY,
    EXIT_OK,
    EXIT_STALE,
    ConnectError,
    HostError,
    HostKeyError,
    InfratoolError,
    InputError,
)
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
from infratool.remote import Held, Remote, release_all
from infratool.secrets.secret import REDACTOR
from infratool.tasks.base import HostTask, PlanContext, Task

Event = Callable[[str, str, str], None]
"""``on_event(host, status, message)`` for progress displays."""


@dataclass
class HostResult:
    """Outcome of a run on one host."""

    host: str
    status: str = "ok"
    """ok | changed | failed | unreachable | refused | stale (a saved plan's facts drifted)"""
    applied: list[str] = field(default_factory=list)
    error: str | None = None
    verified: list[str] = field(default_factory=list)
    """What the verify steps proved on this host after the change (``PlanContext.prove``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "host": self.host,
            "status": self.status,
            "applied": self.applied,
            "verified": self.verified,
            "error": self.error,
        }


@dataclass
class RunResult:
    """Outcome of applying a plan."""

    plan: Plan
    hosts: dict[str, HostResult]

    @property
    def failed(self) -> list[str]:
        """Hosts that failed, were unreachable or were refused."""
        return [h for h, r in self.hosts.items() if r.status in ("failed", "unreachable", "refused")]

    @property
    def exit_code(self) -> int:
        """4 if a host key was refused, 1 if anything else failed, 5 if a saved plan was stale somewhere, else 0."""
        if any(r.status == "refused" for r in self.hosts.values()):
            return EXIT_HOSTKEY
        if self.failed:
            return EXIT_FAILED
        return EXIT_STALE if any(r.status == "stale" for r in self.hosts.values()) else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "plan": self.plan.to_dict(),
            "results": [r.to_dict() for r in self.hosts.values()],
            "failed": self.failed,
        }


def plan_exit_code(plan: Plan, detailed: bool) -> int:
    """Exit code of `plan`: 4 refused key, 1 failures, 2 pending changes (detailed), else 0."""
    if plan.host_key_refused:
        return EXIT_HOSTKEY
    if plan.failures:
        return EXIT_FAILED
    if detailed and plan.changes:
        return EXIT_CHANGES
    return EXIT_OK


class Runner:
    """Plans and applies one playbook against an inventory."""

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
            ctx = PlanContext(
                hosts=hosts,
                local=self.local,
                inventory=self.inventory,
                options=self.options,
                state=self.state,
            )
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

    # -- apply --------------------------------------------------------------

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
        held = self._lock_hosts(plan, failed)
        try:
            self._apply_plan(plan, failed, results)
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

    def _lock_hosts(self, plan: Plan, failed: dict[str, str]) -> dict[str, Held]:
        """Take the run lock on every host the plan changes; a host whose lock is refused fails.

        Without a wait, all at once (a busy host is refused immediately, so
        two runs cannot deadlock); with ``--wait``, one host after the other
        in name order, so two waiting runs queue instead of each holding
        what the other waits for.
        """
        names = sorted({c.host for c in plan.changes if c.host in self.contexts and c.host not in failed})
        held: dict[str, Held] = {}
        holder = hostlock.describe_run(f"run {self.playbook.name}")

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

    def _apply_plan(self, plan: Plan, failed: dict[str, str], results: dict[str, HostResult]) -> None:
        by_key: dict[tuple[int, int], list[Change]] = {}
        for c in plan.changes:
            by_key.setdefault((c.stage, c.phase), []).append(c)
        groups: list[list[tuple[int, int]]] = []
        for key in sorted(by_key):
            if groups and self._back_to_back(key, by_key) and self._back_to_back(groups[-1][-1], by_key):
                groups[-1].append(key)
            else:
                groups.append([key])
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
        view = DeferredWrites(ctx) if isinstance(ctx, HostContext) else ctx
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
            if isinstance(view, DeferredWrites):
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
                ctx = PlanContext(
                    hosts=hosts,
                    local=self.local,
                    inventory=self.inventory,
                    options=self.options,
                    state=self.state,
                )
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
        ctx = PlanContext(
            hosts=hosts, local=self.local, inventory=self.inventory, options=self.options, state=self.state
        )
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


__all__ = ["HostResult", "RunResult", "Runner", "is_local", "plan_exit_code"]
