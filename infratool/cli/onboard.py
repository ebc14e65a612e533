"""Commands ``init``, ``host add|remove`` and ``completion``: parse, call :mod:`infratool.onboard`, print.

The logic (scaffolding, hosts.yaml and .sops.yaml edits, re-encryption)
lives in :mod:`infratool.onboard`; this module only turns options into a
request, asks the operator to confirm a host key, and renders the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from infratool.cli import hostview
from infratool.cli.common import Globals, emit_json, examples, pass_globals
from infratool.cli.gitsync import git_options
from infratool.errors import EXIT_FAILED, InputError

rotate_option = click.option(
    "--rotate",
    is_flag=True,
    help="Then run the rotation plan right away (staged, verified, like `secrets rotate`).",
)


# -- init ----------------------------------------------------------------------


@click.command(
    help="Start a fleet repo in DIR (default: the current directory): a commented hosts.yaml, "
    "playbooks/site.yaml (with a baseline playbook), secrets/.sops.yaml and a README. "
    "The operator's age key is created (0600) at sops's standard location, or reused if one is "
    "there; its path and public recipient are printed, never the key. Existing files are never "
    "overwritten."
    + examples(
        "infratool init fleet && cd fleet",
        "infratool init . --ssh-key ~/.ssh/id_admin --os linux",
        "SOPS_AGE_KEY_FILE=~/keys/ops.txt infratool init fleet",
    )
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option(
    "--ssh-key",
    default="~/.ssh/id_ed25519",
    show_default=True,
    help="Identity infratool logs in with (defaults.ssh_key).",
)
@click.option(
    "--os",
    "os_kind",
    type=click.Choice(["nixos", "linux"]),
    default="nixos",
    show_default=True,
    help="Default host OS (defaults.os).",
)
@click.option(
    "--age-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Operator age key [default: $SOPS_AGE_KEY_FILE, else ~/.config/sops/age/keys.txt].",
)
@pass_globals
def init(g: Globals, directory: Path, ssh_key: str, os_kind: str, age_key_file: Path | None) -> None:
    from infratool.onboard import init_repo
    from infratool.onboard.scaffold import default_key_file

    result = init_repo(directory, age_key_file or default_key_file(), ssh_key=ssh_key, os_kind=os_kind)
    if g.json:
        emit_json(
            {
                "directory": str(result.directory),
                "created": [str(p) for p in result.created],
                "age_key_file": str(result.key_file),
                "age_key_created": result.key_created,
                "age_recipient": result.recipient,
            }
        )
        return
    con = hostview.out()
    for path in result.created:
        con.print(f"[green]created[/green] {hostview.esc(path)}")
    state = "new, mode 0600 — back it up" if result.key_created else "existing key reused"
    con.print(
        f"operator age key: {hostview.esc(result.key_file)} ({state}); the private key is never printed"
    )
    con.print(f"operator age recipient: {hostview.esc(result.recipient)}")
    where = "" if directory == Path(".") else f"cd {directory} && "
    con.print(f"[bold]next:[/bold] {hostview.esc(where)}infratool host add NAME --address ADDRESS")


# -- host add / remove ------------------------------------------------------------


def _host_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion for host names: the inventory's hosts (nothing on any error)."""
    try:
        from infratool import yamlsrc
        from infratool.inventory import resolve_path

        g = ctx.find_root().params.get("inventory")
        data = yamlsrc.load_plain(resolve_path(g).read_text())
        return [str(n) for n in (data.get("hosts") or {}) if str(n).startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []


@click.group(
    help="Pin a host's SSH key and enrol it as a sops recipient (add), or take it out (remove)."
    + examples(
        "infratool host add web1 --address web1.home.arpa --tags server",
        "infratool host add web1 --address 10.0.0.5 --fingerprint SHA256:abc...",
        "infratool host remove web1",
    )
)
def host() -> None:
    """Host onboarding commands."""


def _split_tags(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for v in values for t in v.split(",") if t.strip()))


@host.command(
    "add",
    help="Add host NAME to hosts.yaml with its SSH host key pinned, after you confirm the key. "
    "Connects once (key exchange only), shows the ssh-ed25519 key the host offers and asks; "
    "--fingerprint or --host-key check it instead (unattended). Then the host's age recipient — "
    "its host key converted as ssh-to-age does, what sops-nix decrypts with — is added to "
    "secrets/.sops.yaml (secrets/NAME.yaml and secrets/common.yaml) and those files are "
    "re-encrypted (sops updatekeys). Comments and order in hosts.yaml are kept."
    + examples(
        "infratool host add web1 --address web1.home.arpa --tags server,db",
        "echo yes | infratool host add web1 --address 10.0.0.5",
        "infratool host add web1 --address 10.0.0.5 --fingerprint SHA256:Xm3...",
        "infratool host add web1 --address 10.0.0.5 --replace   # re-pin after a reinstall",
        'infratool host add new1 --address 10.0.0.9 --offline --host-key "$(cat ssh_host_ed25519_key.pub)"',
    ),
)
@click.argument("name")
@click.option("--address", "-a", required=True, help="DNS name or IP address to reach the host.")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=None, help="SSH port [default: 22].")
@click.option("--user", "-u", default=None, help="Login user, if not the inventory default.")
@click.option("--ssh-key", default=None, help="Login identity, if not the inventory default.")
@click.option(
    "--tags", "-t", multiple=True, metavar="TAG[,TAG]", help="Tags for --limit tag:NAME (repeatable)."
)
@click.option(
    "--os",
    "os_kind",
    type=click.Choice(["nixos", "linux"]),
    default=None,
    help="nixos (declarative) or linux (files over SSH) [default: the inventory's].",
)
@click.option("--system", default=None, help="Nix system, e.g. aarch64-linux [default: the inventory's].")
@click.option(
    "--fingerprint",
    default=None,
    metavar="SHA256:...",
    help="Pin only if the offered key has this fingerprint.",
)
@click.option(
    "--host-key", default=None, metavar="'ssh-ed25519 AAAA...'", help="Pin only if the host offers this key."
)
@click.option("--offline", is_flag=True, help="Do not contact the host: pin --host-key as given.")
@click.option(
    "--replace",
    is_flag=True,
    help="Re-pin a host already in hosts.yaml (after a reinstall): the files its old key could "
    "decrypt get new data keys, and the secrets it held or could read are listed to rotate.",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the host.")
@rotate_option
@git_options
@pass_globals
def host_add(
    g: Globals,
    name: str,
    address: str,
    port: int | None,
    user: str | None,
    ssh_key: str | None,
    tags: tuple[str, ...],
    os_kind: str | None,
    system: str | None,
    fingerprint: str | None,
    host_key: str | None,
    offline: bool,
    replace: bool,
    timeout: float,
    rotate: bool,
    git_commit: bool | None,
    git_push: bool | None,
) -> None:
    from infratool.cli import gitsync
    from infratool.inventory import resolve_path
    from infratool.onboard import HostRequest, add_host

    if rotate and not replace:
        raise InputError("--rotate goes with --replace (a new host has no old key to revoke)")
    _check_rotate(g, rotate, without=None)

    request = HostRequest(
        name=name,
        address=address,
        port=port,
        user=user,
        ssh_key=ssh_key,
        os=os_kind,
        system=system,
        tags=_split_tags(tags),
        fingerprint=fingerprint,
        host_key=host_key,
        offline=offline,
        replace=replace,
        timeout=timeout,
    )
    shown_port = f":{port}" if port else ""

    def confirm(key_line: str, fp: str) -> bool:
        # The question goes to stderr so --json output on stdout stays parseable;
        # the answer may come from a pipe (`echo yes | ...`), never by default.
        click.echo(f"{name} ({address}{shown_port}) offers host key {key_line.split()[0]} {fp}", err=True)
        click.echo(
            "Compare it with the host's own `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`.", err=True
        )
        return _ask(f"Pin this key for {name}?")

    path = resolve_path(g.inventory)
    repo = gitsync.open_for_inventory(path, git_commit, git_push, "host add")
    gitsync.start(repo)
    result = add_host(path, request, confirm)
    if g.json:
        emit_json(result.to_dict())
    else:
        hostview.render(result, "pinned" if result.inventory_changed else "already pinned")
    if gitsync.finish(repo, hostview.commit_message(result, "host add")):
        sys.exit(EXIT_FAILED)
    if rotate:
        _rotate_revoked(g, result, without=None, command="host add --replace --rotate")


@host.command(
    "remove",
    help="Take host NAME out: every sops file it could decrypt gets a new data key without it "
    "(sops rotate), the sops creation rules drop it, then its entry leaves hosts.yaml (other "
    "lines and comments kept). Lists every secret it held (a consumer there) or could read, "
    "with the reason, as a rotation plan; --rotate runs that plan right away, staged like any "
    "rotation."
    + examples(
        "infratool host remove web1",
        "infratool -i fleet/hosts.yaml host remove web1 --yes --rotate",
    ),
)
@click.argument("name", shell_complete=_host_names)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@rotate_option
@git_options
@pass_globals
def host_remove(
    g: Globals, name: str, yes: bool, rotate: bool, git_commit: bool | None, git_push: bool | None
) -> None:
    from infratool.cli import gitsync
    from infratool.errors import RefusedError
    from infratool.inventory import resolve_path
    from infratool.onboard import remove_host

    _check_rotate(g, rotate, without=name)
    path = resolve_path(g.inventory)
    # A dirty secrets/ (or inventory) or a branch behind upstream refuses here, before anything.
    repo = gitsync.open_for_inventory(path, git_commit, git_push, "host remove")
    if not yes and not _ask(f"Remove {name} from {path} and its secrets' recipients?"):
        raise RefusedError(f"{name} not removed (not confirmed; --yes to skip the question)")
    gitsync.start(repo)
    result = remove_host(path, name)
    if g.json:
        emit_json(result.to_dict())
    else:
        hostview.render(result, "removed")
    if gitsync.finish(repo, hostview.commit_message(result, "host remove")):
        sys.exit(EXIT_FAILED)
    if rotate:
        _rotate_revoked(g, result, without=name, command="host remove --rotate")


def _check_rotate(g: Globals, rotate: bool, without: str | None) -> None:
    """Refuse a --rotate that could not run, before the host change touches anything (exit 3).

    --rotate prints its own run (plan, results): not mixed into one JSON
    document. The policy it will run with (``without``'s consumers left out)
    must be valid against the inventory as it will be.
    """
    if not rotate:
        return
    if g.json:
        raise InputError(
            "--rotate cannot be combined with --json: run the host command with --json, "
            "then `infratool --json secrets rotate NAME...` with the names it lists"
        )
    from infratool.cli.common import load_inventory
    from infratool.onboard.revoke import rotation_policy_data
    from infratool.rotation.policy import parse_policy
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY

    inv = load_inventory(g)
    policy = inv.flake / DEFAULT_POLICY
    if not policy.is_file():
        return  # nothing to rotate: the host command says so
    data = rotation_policy_data(policy, without)
    names = set(inv.names) - {without}
    parse_policy({k: data[k] for k in ("secrets", "notify") if k in data}, policy, names, root=inv.flake)


def _rotate_revoked(g: Globals, result, without: str | None, command: str) -> None:
    """Run the revocation's rotation plan now: one staged rotation of the listed secrets.

    Asked for by --rotate, after the host change was confirmed: not asked again.
    The departed host's consumers are left out of the policy for this run (there
    is nobody there to deliver to). The host change was committed first (in a
    git fleet repo); the rotation commits as ``secrets rotate`` does.
    """
    from infratool.cli.common import load_inventory
    from infratool.cli.secrets import run_rotation
    from infratool.onboard.revoke import rotation_policy_data
    from infratool.tasks.base import Source
    from infratool.tasks.secrets_rotation import DEFAULT_POLICY, RotateSecrets

    names = [p.secret for p in result.revocation.plan] if result.revocation else []
    if not names:
        click.echo("--rotate: no secret of the rotation policy to rotate", err=True)
        return
    inv = load_inventory(g)
    policy = inv.flake / DEFAULT_POLICY
    data = rotation_policy_data(policy, without)
    args = {
        "policy": None,
        "secrets": data["secrets"],
        "notify": data.get("notify"),
        "names": names,
        "due": False,
        "force": True,
        "lock_wait": 0,
    }
    task = RotateSecrets(args, Source(file=policy, line=None, params=data), inv)
    run_rotation(g, inv, task, dry_run=False, yes=True, forks=10, unattended=False, command=command)


def _ask(question: str) -> bool:
    """Ask on stderr; the answer may be piped in (`echo yes | ...`); no answer means no."""
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:
        answer = False
    if not sys.stdin.isatty():
        # A piped answer is not echoed by the terminal: show it, so logs read right.
        click.echo("yes" if answer else "no", err=True)
    return answer
