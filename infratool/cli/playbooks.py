"""`plan`, `run` and `apply`: a playbook planned, shown, confirmed, applied — or saved and applied later.

`run` and `apply` go through the CLI's one run sequence
(:func:`infratool.cli.sequence.run_sequence`); `plan -o FILE` saves the plan
(docs/plan-format.md) and `apply FILE` / `run PLAYBOOK --plan FILE` apply
exactly it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from infratool.cli import gitsync
from infratool.cli.common import (
    Globals,
    audit_run,
    emit_json,
    examples,
    forks_option,
    limit_option,
    load_inventory,
    need_terminal,
    open_audit,
    pass_globals,
    progress_display,
    timeout_option,
)
from infratool.cli.gitsync import git_options
from infratool.errors import InputError

# -- plan / run --------------------------------------------------------------


SELECTION_KEY = "infratool.selection"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(SELECTION_KEY, {})[param.name] = value
    return value


def selection_options(f: Any) -> Any:
    """--tags/--skip-tags/--list-hosts/--list-tasks for plan and run (read by :func:`_prepare`)."""
    options = [
        click.option(
            "--tags",
            metavar="TAGS",
            expose_value=False,
            callback=_remember,
            help="Only entries with one of these tags (comma list).",
        ),
        click.option(
            "--skip-tags",
            metavar="TAGS",
            expose_value=False,
            callback=_remember,
            help="Leave out entries with any of these tags.",
        ),
        click.option(
            "--list-hosts",
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="Print the hosts each entry would run on; connect to none.",
        ),
        click.option(
            "-e",
            "--extra-vars",
            "extra_vars",
            metavar="KEY=VALUE|@FILE",
            multiple=True,
            expose_value=False,
            callback=_remember,
            help="Playbook variable (repeatable; VALUE read as YAML), or a YAML file of them; "
            "overrides the playbook's vars:.",
        ),
        click.option(
            "--list-tasks",
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="Print the entries (task, tags, hosts) that would run; connect to none.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _prepare(g: Globals, playbook_path: str, **opts: Any):
    from infratool import playbook as pb
    from infratool.options import RunOptions
    from infratool.runner import Runner

    chosen = click.get_current_context().meta.get(SELECTION_KEY, {})
    inv = load_inventory(g)
    if opts.get("limit"):
        inv.select(opts["limit"])  # a --limit that matches nothing is bad input, before connecting
    from infratool.template import parse_extra_vars

    book = pb.load(playbook_path, inv, parse_extra_vars(chosen.get("extra_vars") or ()))
    if chosen.get("tags") or chosen.get("skip_tags"):
        book = pb.filter_tags(book, chosen.get("tags"), chosen.get("skip_tags"))
    targets = [(invocation, invocation.hosts(inv, opts.get("limit"))) for invocation in book.invocations]
    if not any(hosts for _, hosts in targets):
        # A plan of "0 changes on 0 targets" would read as "all converged".
        what = f"--limit {opts['limit']!r} and " if opts.get("limit") else ""
        raise InputError(f"{what}the playbook's 'hosts:' select no host: nothing to do", file=book.path)
    if chosen.get("list_hosts") or chosen.get("list_tasks"):
        _list(g, book, targets, tasks=bool(chosen.get("list_tasks")))
        sys.exit(0)
    open_audit(g)  # an unusable audit log is bad input: exit 3 before connecting
    options = RunOptions(audit_log=g.audit_log, **opts)
    return inv, book, options, Runner


def _selection(limit: str | None, deploy: bool) -> dict[str, Any]:
    """What shaped a plan besides the playbook: recorded in a plan file, reused by `apply`."""
    chosen = click.get_current_context().meta.get(SELECTION_KEY, {})
    return {
        "limit": limit,
        "tags": chosen.get("tags"),
        "skip_tags": chosen.get("skip_tags"),
        "extra_vars": list(chosen.get("extra_vars") or ()),
        "deploy": deploy,
    }


def _list(g: Globals, book: Any, targets: list[tuple[Any, list[Any]]], tasks: bool) -> None:
    """--list-hosts / --list-tasks: what would run where, from the files alone."""
    entries = [
        {
            "task": invocation.task.name,
            "label": invocation.label,
            "tags": list(invocation.tags),
            "hosts": [h.name for h in hosts],
        }
        for invocation, hosts in targets
    ]
    hosts = sorted(
        {name for e in entries for name in e["hosts"]}, key=[h for e in entries for h in e["hosts"]].index
    )
    if g.json:
        emit_json({"playbook": str(book.path), "hosts": hosts, **({"tasks": entries} if tasks else {})})
        return
    if not tasks:
        click.echo(f"playbook: {book.path} ({len(hosts)} host(s))")
        for name in hosts:
            click.echo(f"  {name}")
        return
    from infratool.cli import output as render

    render.records(
        render.console(),
        f"playbook: {book.path}",
        [
            render.Column("task", keep=True),
            render.Column("label"),
            render.Column("tags"),
            render.Column("hosts", keep=True),
        ],
        [[e["task"], e["label"], ", ".join(e["tags"]), ",".join(e["hosts"]) or "-"] for e in entries],
    )


def deploy_options(fn: Any) -> Any:
    """``--confirm-timeout`` and ``--build-on`` of plan and run (they go into the deploy changes)."""
    fn = click.option(
        "--build-on",
        metavar="HOST",
        default=None,
        help="Build NixOS systems in HOST's store (default: here).",
    )(fn)
    return click.option(
        "--confirm-timeout",
        type=click.IntRange(5, 3600),
        default=30,
        metavar="SECONDS",
        help="A deployed NixOS host rolls itself back unless confirmed within SECONDS (default 30).",
    )(fn)


def _check_build_on(inv: Any, build_on: str | None) -> None:
    if build_on and build_on not in inv.hosts:
        raise InputError(f"--build-on {build_on!r}: no such host in {inv.path}")


@click.command(
    help="Show what a playbook would change, touching nothing."
    + examples(
        "infratool plan playbooks/site.yaml",
        "infratool plan playbooks/site.yaml --detailed-exitcode  # 2 = changes pending",
        "infratool --json plan playbooks/remote-builders.yaml --limit snix",
    )
)
@click.argument("playbook", type=click.Path(dir_okay=False))
@limit_option
@selection_options
@forks_option
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when changes are pending, 0 when none are (like terraform). Checks are not changes: "
    "a plan of only checks exits 0 (the checks are still shown and counted).",
)
@click.option("--no-diff", is_flag=True, help="Descriptions only.")
@click.option("--no-deploy", is_flag=True, help="Plan no deploy step for NixOS hosts.")
@deploy_options
@click.option(
    "-o",
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the plan to FILE (secrets sealed with sops) for `infratool apply FILE`.",
)
@timeout_option
@pass_globals
def plan(
    g: Globals,
    playbook: str,
    limit: str | None,
    forks: int,
    detailed_exitcode: bool,
    no_diff: bool,
    no_deploy: bool,
    confirm_timeout: int,
    build_on: str | None,
    out_file: Path | None,
    timeout: float | None,
) -> None:
    from infratool.cli import output as render
    from infratool.cli.sequence import abandon
    from infratool.runner import plan_exit_code

    inv, book, options, Runner = _prepare(
        g,
        playbook,
        limit=limit,
        forks=forks,
        command_timeout=timeout,
        deploy=not no_deploy,
        confirm_timeout=confirm_timeout,
        build_on=build_on,
    )
    _check_build_on(inv, build_on)
    selection = _selection(limit, not no_deploy)
    progress = render.Progress(render.console(stderr=True), enabled=g.verbosity >= 0 and not g.json)
    with Runner(inv, book, options, on_event=progress) as runner, progress:
        the_plan = runner.plan()
    audit_run(g, "plan", book, the_plan)
    if g.json:
        emit_json(the_plan.to_dict())
    else:
        render.plan(render.console(), the_plan, show_diff=not no_diff)
    if out_file is None:
        abandon(book)  # shown, never to be applied: return what planning issued (Vault leases)
    else:
        try:
            _save_plan(out_file, the_plan, inv, book, selection)
        except BaseException:
            abandon(book)
            raise
        if not g.json:
            click.echo(f"Saved the plan to {out_file}: apply it with `infratool apply {out_file}`.", err=True)
    sys.exit(plan_exit_code(the_plan, detailed_exitcode))


def _save_plan(path: Path, the_plan: Any, inv: Any, book: Any, selection: dict[str, Any]) -> None:
    from infratool import planfile
    from infratool.secrets.seal import seal

    header = planfile.Header.of(inv, book, selection)
    planfile.save(path, the_plan, header, lambda values: seal(values, inv.flake / "secrets"))


wait_option = click.option(
    "--wait",
    "lock_wait",
    type=click.FloatRange(0, 86400),
    default=0,
    metavar="SECONDS",
    help="Queue up to SECONDS behind another run applying to a host (default: refuse that host at once).",
)
"""``--wait`` of run and apply."""


@click.command(
    help="Plan, confirm, apply and verify a playbook."
    + examples(
        "infratool run playbooks/site.yaml",
        "infratool run playbooks/secrets-rotation.yaml --yes --forks 4",
        "infratool run playbooks/baseline.yaml --limit 'all,!nixtv-player' --no-deploy",
    )
)
@click.argument("playbook", type=click.Path(dir_okay=False))
@limit_option
@selection_options
@click.option(
    "--yes", "-y", is_flag=True, help="Apply without asking (required when stdin is not a terminal)."
)
@forks_option
@click.option("--no-deploy", is_flag=True, help="Skip the deploy step for NixOS hosts.")
@deploy_options
@click.option("--no-diff", is_flag=True, help="Descriptions only.")
@wait_option
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Apply exactly this saved plan of PLAYBOOK (from `plan -o`) instead of planning again.",
)
@timeout_option
@git_options
@pass_globals
def run(
    g: Globals,
    playbook: str,
    limit: str | None,
    yes: bool,
    forks: int,
    no_deploy: bool,
    confirm_timeout: int,
    build_on: str | None,
    no_diff: bool,
    lock_wait: float,
    plan_file: Path | None,
    timeout: float | None,
    git_commit: bool | None,
    git_push: bool | None,
) -> None:
    from infratool.cli.sequence import apply_and_exit

    if plan_file is not None:
        chosen = click.get_current_context().meta.get(SELECTION_KEY, {})
        if limit or no_deploy or any(chosen.get(k) for k in ("tags", "skip_tags", "extra_vars")):
            # The plan was made with its own selection; another one would not be "exactly the plan".
            raise InputError(
                "--plan applies the saved plan's own selection: drop --limit/--tags/-e/--no-deploy"
            )
        from infratool.cli.saved import apply_saved

        apply_saved(
            g, plan_file, playbook, yes, forks, not no_diff, lock_wait, timeout, (git_commit, git_push)
        )
        return
    inv, book, options, Runner = _prepare(
        g,
        playbook,
        limit=limit,
        forks=forks,
        yes=yes,
        deploy=not no_deploy,
        confirm_timeout=confirm_timeout,
        build_on=build_on,
        command_timeout=timeout,
        lock_wait=lock_wait,
    )
    _check_build_on(inv, build_on)
    need_terminal(yes)
    repo = gitsync.for_playbook(inv, book, (git_commit, git_push), "run")
    apply_and_exit(
        g, inv, book, Runner(inv, book, options, on_event=progress_display(g)), repo, "run", yes, not no_diff
    )
