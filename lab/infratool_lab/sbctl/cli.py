"""The command table and the entry point: cobra's command lookup, help/usage and main()."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .cmd_files import _cmd_list_files, _cmd_remove_file, _cmd_sign, _cmd_sign_all, _cmd_verify
from .cmd_keys import _cmd_create_keys, _cmd_list_enrolled_keys, _cmd_status, _cmd_version
from .cmd_setup import _cmd_setup
from .consts import DEFAULT_DIR_SINCE
from .enroll import _cmd_enroll_keys, _cmd_reset
from .flags import (
    _GLOBAL_FLAGS,
    _PARTIAL,
    _args_minus_first,
    _Command,
    _Flag,
    _flag_usages,
    _levenshtein,
    _parse_flags,
    _strip_flags,
)
from .output import _Exit, _Fail, _FlagError, _go_quote, _Log, _os_error
from .runtime import _Ctx

# In upstream's init order (Go initialises cmd/sbctl/*.go alphabetically).
_COMMANDS = (
    _Command("bundle", "Bundle the needed files for an EFI stub image", None),
    _Command("completion", "", None),
    _Command(
        "create-keys",
        "Create a set of secure boot signing keys",
        _cmd_create_keys,
        (
            _Flag("yk-overwrite", "overwrite existing key if it exists in the Yubikey Signature slot"),
            _Flag("export", "export file path", "e", "string"),
            _Flag("database-path", "location to create GUID file", "d", "string"),
            _Flag("keytype", "key type for all keys", kind="string"),
            _Flag("pk-keytype", "PK key type (default: file)", kind="string"),
            _Flag("kek-keytype", "KEK key type (default: file)", kind="string"),
            _Flag("db-keytype", "db key type (default: file)", kind="string"),
        ),
    ),
    _Command("debug", "Produce debug information for sbctl", None, hidden=True),
    _Command(
        "enroll-keys",
        "Enroll the current keys to EFI",
        _cmd_enroll_keys,
        (
            _Flag("yes-this-might-brick-my-machine", "ignore any errors and enroll keys", dest="force"),
            _Flag("yolo", "yolo", dest="force", hidden=True),
            _Flag("ignore-immutable", "ignore checking for immutable efivarfs files", "i"),
            _Flag(
                "export",
                "export the EFI database values to current directory instead of enrolling",
                kind="set",
                allowed=("esl", "auth"),
            ),
            _Flag("partial", "enroll a partial set of keys", "p", "set", _PARTIAL),
            _Flag("custom-bytes", "path to the bytefile to be enrolled to efivar", kind="string"),
            _Flag("append", "append the key to the existing ones", "a"),
            _Flag("microsoft", "include microsoft keys into key enrollment", "m"),
            _Flag("tpm-eventlog", "include TPM eventlog checksums into the db database", "t"),
            _Flag("custom", "include custom db and KEK", "c"),
            _Flag(
                "firmware-builtin",
                "include keys indicated by the firmware as being part of the default database",
                "f",
                "list",
                noopt="db,KEK",
            ),
        ),
    ),
    _Command("export-enrolled-keys", "Export already enrolled keys from the system", None),
    _Command("generate-bundles", "Generate all EFI stub bundles", None),
    _Command("import-keys", "Import keys into sbctl", None),
    _Command("list-bundles", "List stored bundles", None, aliases=("ls-bundles",)),
    _Command(
        "list-enrolled-keys",
        "List enrolled keys on the system",
        _cmd_list_enrolled_keys,
        aliases=("ls-enrolled-keys",),
    ),
    _Command("list-files", "List enrolled files", _cmd_list_files, aliases=("ls-files", "ls")),
    _Command("remove-bundle", "Remove bundle from database", None, aliases=("rm-bundle",)),
    _Command("remove-file", "Remove file from database", _cmd_remove_file, aliases=("rm-file", "rm")),
    _Command(
        "reset",
        "Reset Secure Boot Keys",
        _cmd_reset,
        (
            _Flag("partial", "reset a partial set of keys", "p", "set", _PARTIAL),
            _Flag(
                "cert-files",
                "optional paths to certificate file to remove from the hierarchy "
                "(separate individual paths by ';')",
                "c",
                "string",
            ),
        ),
    ),
    _Command("rotate-keys", "Rotate secure boot keys with new keys.", None),
    _Command(
        "setup",
        "Setup sbctl",
        _cmd_setup,
        (
            _Flag("print-config", "print config file"),
            _Flag("print-state", "print the state of sbctl"),
            _Flag("migrate", "migrate the sbctl installation"),
            _Flag("setup", "setup the sbctl installation"),
        ),
        since=DEFAULT_DIR_SINCE,
    ),
    _Command(
        "sign-all",
        "Sign all enrolled files with secure boot keys",
        _cmd_sign_all,
        (_Flag("generate", "run all generate-* sub-commands before signing", "g"),),
    ),
    _Command(
        "sign",
        "Sign a file with secure boot keys",
        _cmd_sign,
        (
            _Flag("save", "save file to the database", "s"),
            _Flag("output", "output filename. Default replaces the file", "o", "string"),
        ),
    ),
    _Command("status", "Show current boot status", _cmd_status),
    _Command("verify", "Find and check if files in the ESP are signed or not", _cmd_verify),
    _Command("version", "Print sbctl version", _cmd_version, hidden=True, since=DEFAULT_DIR_SINCE),
    _Command("help", "Help about any command", None),
)
_ROOT = _Command("sbctl", "Secure Boot Key Manager", None)
_BY_NAME = {n: c for c in _COMMANDS for n in (c.name, *c.aliases)}


def _available(cmd: _Command) -> bool:
    """cobra IsAvailableCommand (help is listed separately)."""
    return not cmd.hidden and cmd.name not in ("help", "completion")


def _help_flag(cmd: _Command) -> _Flag:
    return _Flag("help", f"help for {cmd.name}", "h")


def _all_flags(cmd: _Command) -> list[_Flag]:
    return [*cmd.flags, *_GLOBAL_FLAGS, _help_flag(cmd)]


def _suggestions(word: str) -> str:
    found = [
        c.name
        for c in _COMMANDS
        if _available(c) and (_levenshtein(word, c.name) <= 2 or c.name.lower().startswith(word.lower()))
    ]
    if not found:
        return ""
    return "\n\nDid you mean this?\n" + "".join(f"\t{name}\n" for name in found)


def _usage(cmd: _Command) -> str:
    """cobra's default usage template, rendered for sbctl's commands."""
    if cmd is _ROOT:
        pad = max(11, max(len(c.name) for c in _COMMANDS))
        listed = sorted((c for c in _COMMANDS if _available(c) or c.name == "help"), key=lambda c: c.name)
        return (
            "Usage:\n  sbctl [command]\n\nAvailable Commands:\n"
            + "".join(f"  {c.name.ljust(pad)} {c.short}\n" for c in listed)
            + "\nFlags:\n"
            + _flag_usages([*_GLOBAL_FLAGS, _help_flag(cmd)])
            + '\n\nUse "sbctl [command] --help" for more information about a command.\n'
        )
    text = f"Usage:\n  sbctl {cmd.name} [flags]"
    if cmd.aliases:
        text += "\n\nAliases:\n  " + ", ".join((cmd.name, *cmd.aliases))
    text += "\n\nFlags:\n" + _flag_usages([*cmd.flags, _help_flag(cmd)])
    text += "\n\nGlobal Flags:\n" + _flag_usages(list(_GLOBAL_FLAGS)) + "\n"
    return text


def _help(cmd: _Command) -> str:
    head = f"{cmd.short.rstrip()}\n\n" if cmd.short else ""
    return head + _usage(cmd)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def _find(argv: list[str], version: tuple[int, ...] = (999,)) -> tuple[_Command, list[str]]:
    """cobra Command.Find for a root with one level of subcommands (those ``version`` has)."""
    root_flags = list(_GLOBAL_FLAGS)  # the help flag is not known yet at this point
    words = _strip_flags(argv, root_flags)
    if words and words[0] in _BY_NAME and version >= _BY_NAME[words[0]].since:
        return _BY_NAME[words[0]], _args_minus_first(argv, words[0], root_flags)
    if words:
        raise _Fail(
            f'unknown command {_go_quote(words[0])} for "sbctl"{_suggestions(words[0])}',
            how="println",
        )
    return _ROOT, argv


def _execute(ctx: _Ctx, argv: list[str]) -> None:
    cmd, args = _find(argv, ctx.version)
    if cmd.run is None and cmd not in (_ROOT, _BY_NAME["help"]):
        raise _Fail(f"sbctl emulator: the {cmd.name!r} command is not emulated")
    try:
        opts, positional = _parse_flags(_all_flags(cmd), args)
    except _FlagError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{exc}\n{_usage(cmd)}\n")
        sys.stderr.flush()
        raise _Fail("", how="silent") from exc
    if opts.get("help") or cmd is _ROOT:
        sys.stdout.write(_help(cmd))
        sys.stdout.flush()
        return
    if cmd.name == "help":
        target = _BY_NAME.get(positional[0]) if positional else _ROOT
        if target is None:
            sys.stderr.write(f"Unknown help topic [`{positional[0]}`]\n{_usage(_ROOT)}")
        else:
            sys.stdout.write(_help(target))
        return
    ctx.load_config(opts.get("config", ""))
    ctx.opts = opts
    if opts.get("json"):
        ctx.log.on = False
    if opts.get("quiet"):
        ctx.log.disable_info = True
    assert cmd.run is not None
    cmd.run(ctx, opts, positional)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sbctl command line; return the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        # Go writes UTF-8 whatever the locale; so do we (✓/✗ must not crash).
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure:
            reconfigure(encoding="utf-8")
    env = dict(os.environ)
    log = _Log(sys.stdout, sys.stderr, env)
    ctx = _Ctx(env, log)
    try:
        _execute(ctx, args)
    except _Exit as exc:
        return exc.code
    except _Fail as exc:
        if exc.how == "println":
            log.println(exc.message)
        elif exc.how == "error":
            text = exc.message
            if exc.permission:
                text = "sbctl requires root to run: " + text
            log.error(text)
        return 1
    except PermissionError as exc:
        log.error("sbctl requires root to run: " + _os_error("open", ctx.show(str(exc.filename or "")), exc))
        return 1
    finally:
        sys.stdout.flush()
    return 0
