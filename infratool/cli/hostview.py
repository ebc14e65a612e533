"""How ``host add`` / ``host remove`` print what they did: the key, the files, the revocation plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def out():
    """A rich console on stdout (honours NO_COLOR, plain when not a terminal)."""
    from infratool.cli import output as render

    return render.console()


def esc(text: object) -> str:
    """``text`` with rich markup escaped (names and paths come from the user's files)."""
    from rich.markup import escape

    return escape(str(text))


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when below it (as the operator typed it)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def render(result: Any, verb: str) -> None:
    """The result of a host command, for a person (``--json`` prints ``result.to_dict()`` instead)."""
    con = out()
    if result.fingerprint:
        con.print(
            f"[green]{verb}[/green] [bold]{esc(result.name)}[/bold]: "
            f"{esc(result.host_key.split()[0])} [bold]{esc(result.fingerprint)}[/bold]"
        )
    else:
        con.print(f"[green]{verb}[/green] [bold]{esc(result.name)}[/bold]")
    if result.inventory_changed:
        con.print(f"  {esc(_shown(result.inventory))} updated")
    if result.recipient:
        con.print(f"  age recipient (ssh-to-age of the host key): {esc(result.recipient)}")
    rev = result.revocation
    if result.sops_config:
        con.print(f"  {esc(_shown(result.sops_config))} updated")
        for line in file_lines(result, _shown):
            con.print(f"  {esc(line)}")
        if not result.reencrypted and not (rev and rev.data_keys):
            con.print("  no secrets file needed re-encrypting")
    for note in result.notes:
        con.print(f"  [yellow]note:[/yellow] {esc(note)}")
    if rev is not None:
        _render_revocation(con, result, departed=verb == "removed")


def _render_revocation(con, result, departed: bool) -> None:
    rev = result.revocation
    if rev.policy_note:
        con.print(f"  [yellow]note:[/yellow] {esc(rev.policy_note)}")
    if rev.plan:
        con.print(f"  [bold]rotation plan[/bold] ({esc(result.name)} held or could read these values):")
        for planned in rev.plan:
            con.print(f"    {esc(planned.secret)}: {esc('; '.join(planned.reasons))}")
        names = " ".join(p.secret for p in rev.plan)
        if departed:
            # The policy still names the departed host until edited; --rotate leaves it out by itself.
            con.print(
                f"  run it: --rotate (leaves {esc(result.name)} out by itself), or edit it out of the "
                f"policy, then: infratool secrets rotate {esc(names)}"
            )
        else:
            con.print(f"  run it: infratool secrets rotate {esc(names)}  (or pass --rotate)")
    for file, keys in rev.unmanaged.items():
        con.print(
            f"  [yellow]not in the rotation policy[/yellow] — change by hand: {esc(file)}: {esc(', '.join(keys))}"
        )


def file_lines(result: Any, shown: Any) -> list[str]:
    """What happened to each secrets file, one line each (``shown(path)`` names the file)."""
    rev = result.revocation
    lines = [
        f"new data key (sops rotate), without the old key: {shown(p)}" for p in (rev.data_keys if rev else ())
    ]
    return lines + [f"re-encrypted {shown(p)}" for p in result.reencrypted]


def commit_message(result: Any, command: str) -> tuple[str, str]:
    """Subject and body of a ``host add``/``host remove`` commit: names, files and keys, never a value."""
    rev = result.revocation
    verb = {"host remove": "remove", "host add": "re-pin" if rev else "add"}.get(command, command)
    lines = [f"host key: {result.fingerprint}"] if result.fingerprint else []
    lines += [f"age recipient: {result.recipient}"] if result.recipient else []
    lines += file_lines(result, lambda p: Path(p).name)
    lines += [f"to rotate: {p.secret} ({'; '.join(p.reasons)})" for p in (rev.plan if rev else ())]
    lines += ["", f"Committed by `infratool {command}`; no value appears in this message."]
    return f"hosts: {verb} {result.name}", "\n".join(lines)
