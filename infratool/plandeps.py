"""What a plan depends on, and whether it still holds: fact digests, stale targets, needed checks.

The runner stamps every change with the digest of the facts its playbook
entry read on its target (:func:`stamp_facts`); a saved plan records those
facts per target and, at apply, :func:`stale_targets` names the targets whose
facts moved since. Checks use the same digests: :func:`needed_checks` drops a
check whose inputs are those of its last passing run, and
:func:`record_checks` records the ones that passed against the facts as the
run left them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from infratool import log
from infratool.changes import LOCAL, Change, Plan, is_local
from infratool.checkstate import CheckState, check_digest
from infratool.context import HostContext, LocalContext
from infratool.errors import InfratoolError
from infratool.facts import FactCache, FactRequest, build_script, digest_of, parse_fact_key, parse_output


def local_hashes(local: LocalContext, state: Mapping[str, Any]) -> dict[str, str]:
    """The repo files planning read: LocalContext reads and the sops files the run's store opened."""
    store = state.get("sops")
    for path in store.loaded() if store is not None and hasattr(store, "loaded") else ():
        local.note_read(path, path.read_bytes() if path.is_file() else None)
    return dict(local.reads)


def stamp_facts(
    changes: Iterable[Change], host_hashes: Callable[[int, str], dict[str, str]], local: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Give each change the digest of the facts it was planned on; return target → fact hashes.

    A host's change depends on the facts its playbook entry requested on
    that host (``host_hashes(stage, host)``, volatile facts left out); a
    local change on every repo file the plan read (``local``), so a repo
    edited since the plan is caught as well.
    """
    facts: dict[str, dict[str, str]] = {}
    digests: dict[tuple[int, str], str] = {}  # one digest per (entry, target), not per change
    for change in changes:
        key = (change.stage, LOCAL if is_local(change.host) else change.host)
        if key not in digests:
            if is_local(change.host):
                hashes = local
                facts[LOCAL] = local
            else:
                hashes = host_hashes(change.stage, change.host)
                facts.setdefault(change.host, {}).update(hashes)
            digests[key] = digest_of(hashes)
        change.facts = digests[key]
    return {t: h for t, h in facts.items() if h}


def stale_message(keys: Iterable[str]) -> str:
    """``facts changed since the plan: /etc/x, users`` (file facts named by their path)."""
    shown = [k.split(" ", 1)[1] if k.startswith(("file ", "file_meta ")) else k for k in keys]
    return "facts changed since the plan: " + ", ".join(dict.fromkeys(shown))


def stale_targets(saved: Plan, contexts: Mapping[str, HostContext], local: LocalContext) -> dict[str, str]:
    """Target → why a saved plan must not apply there: the recorded facts that differ now.

    Hosts are compared on their freshly gathered facts (``contexts``; a host
    not connected is left to its own failure); local targets on the repo
    files the plan read.
    """
    stale: dict[str, str] = {}
    for target, recorded in saved.facts.items():
        if is_local(target):
            continue
        ctx = contexts.get(target)
        if ctx is None:
            continue
        now = ctx.facts.hashes([parse_fact_key(k) for k in recorded])
        drifted = [k for k, digest in recorded.items() if now.get(k) != digest]
        if drifted:
            stale[target] = stale_message(drifted)
    changed_files = local.drifted(saved.facts.get(LOCAL, {}))
    if changed_files:
        for target in dict.fromkeys(c.host for c in saved.changes if is_local(c.host)):
            stale[target] = stale_message(changed_files)
    return stale


def needed_checks(changes: list[Change], state: CheckState) -> list[Change]:
    """Drop the checks that need not run: nothing they check changes in this run (their host
    and the hosts they require have no change), and their inputs are those of their last
    passing run (:mod:`infratool.checkstate`)."""
    touched = {c.host for c in changes if not c.is_check}
    kept = []
    for c in changes:
        if (
            c.is_check
            and not ({c.host, *c.requires} & touched)
            and state.passed(c.host, c.check or c.description, check_digest(c.facts, c.args))
        ):
            continue
        kept.append(c)
    return kept


def record_checks(
    passed: list[Change],
    contexts: Mapping[str, HostContext],
    requests: Mapping[tuple[int, str], list[FactRequest]],
    state: CheckState,
) -> None:
    """Remember the checks that passed, keyed by the facts as they are *after* the run.

    The next plan compares against what it gathers then, which is the state
    this run left: so a converged host plans no check again. One extra round
    trip per host that ran a check; a host that cannot answer is simply not
    recorded (its checks run again next time).
    """
    records: dict[tuple[str, str], str] = {}
    by_host: dict[str, list[Change]] = {}
    for c in passed:
        by_host.setdefault(c.host, []).append(c)
    for host, checks in by_host.items():
        ctx = contexts.get(host)
        fresh = FactCache(host)
        if ctx is not None:
            wanted = [r for c in checks for r in requests.get((c.stage, host), [])]
            try:
                script, marker, ordered = build_script(wanted)
                if ordered:
                    res = ctx.remote.run(script, check=False, what="gather facts")
                    fresh.update(parse_output(res.stdout, marker, ordered))
            except InfratoolError:
                continue
        for c in checks:
            after = fresh.hashes(requests.get((c.stage, host), []))
            digest = c.facts if is_local(host) else digest_of(after)
            records[(host, c.check or c.description)] = check_digest(digest, c.args)
    try:
        state.record(records)
    except OSError as exc:  # a lost record costs one re-run of the check, not the run
        log.get_logger("infratool.runner").warning(
            "cannot record passing checks", path=str(state.path), error=str(exc)
        )
