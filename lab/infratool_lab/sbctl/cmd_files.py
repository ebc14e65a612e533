"""Commands about boot files: sign, sign-all, verify, list-files, remove-file."""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from .output import _AlreadySigned, _Exit, _Fail, _os_error
from .pe import _check_msdos, _sign_file, _verify_file
from .runtime import Opts, _Ctx, _Key


def _cmd_sign(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if not args:
        ctx.log.print("Requires a file to sign\n")
        raise _Exit(1)
    file = os.path.abspath(args[0])
    output = opts.get("output", "")
    if not output:
        for entry in ctx.read_files_db().values():
            if entry["file"] == file:
                output = entry["output_file"]
                break
    output = os.path.abspath(output) if output else file
    keys = ctx.key_hierarchy()
    try:
        _sign_and_save(ctx, keys, file, output, bool(opts.get("save")))
    except _AlreadySigned:
        ctx.log.print(f"File has already been signed {output}\n")
        return
    ctx.log.ok(f"Signed {output}")


def _sign_and_save(ctx: _Ctx, keys: dict[str, _Key], file: str, output: str, save: bool) -> None:
    """sbctl.go Sign: sign, and with --save record the file in the database."""
    try:
        files = ctx.read_files_db()
    except _Fail as exc:
        raise _Fail(f"couldn't open database: {ctx.show(ctx.config.files_db)}") from exc
    already = False
    entry = files.get(file)
    if entry and entry["output_file"] == output:
        _sign_file(ctx, keys, entry["file"], entry["output_file"])
        ctx.write_files_db(files)
    else:
        try:
            _sign_file(ctx, keys, file, output)
        except _AlreadySigned:
            if not save:
                raise
            already = True
    if save:
        files[file] = {"file": file, "output_file": output}
        ctx.write_files_db(files)
    if already:
        raise _AlreadySigned


def _cmd_sign_all(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if opts.get("generate"):
        raise _Fail("sbctl emulator: sign-all --generate (bundles) is not emulated")
    files = ctx.read_files_db()
    failed = False
    for key in sorted(files):
        entry = files[key]
        try:
            keys = ctx.key_hierarchy()
        except _Fail as exc:
            raise _Fail(exc.message, how="silent") from exc
        try:
            _sign_file(ctx, keys, entry["file"], entry["output_file"])
        except _AlreadySigned:
            ctx.log.print(f"File has already been signed {entry['output_file']}\n")
        except _Fail as exc:
            ctx.log.error(f"failed signing {entry['file']}: {exc.message}")
            failed = True
            continue
        else:
            ctx.log.ok(f"Signed {entry['output_file']}")
        ctx.write_files_db(files)
    if failed:
        raise _Fail("", how="silent")


def _esp_path(ctx: _Ctx) -> str:
    """sbctl.GetESP: environment first, then (instead of lsblk) the firmware file."""
    for name in ("SYSTEMD_ESP_PATH", "ESP_PATH"):
        if name in ctx.env:
            return ctx.env[name]
    esp = ctx.firmware().esp
    # lsblk only reports mounted partitions, so a missing directory means
    # sbctl found no ESP (a missing ESP_PATH, by contrast, reaches afero.Walk).
    if not esp or not os.path.isdir(ctx.sys(esp)):
        raise _Fail("failed to find EFI system partition")
    return ctx.sys(esp)


def _checked_key(path: str) -> str:
    """util.go AddChecked/InChecked: the path without its first component."""
    return "/".join(path.split("/")[2:])


def _go_panic() -> NoReturn:
    """afero.Walk hands verify a nil FileInfo for unreadable paths; sbctl dereferences it."""
    sys.stdout.flush()
    sys.stderr.write(
        "panic: runtime error: invalid memory address or nil pointer dereference\n"
        "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]\n"
    )
    sys.stderr.flush()
    raise _Exit(2)


def _cmd_verify(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    esp = _esp_path(ctx)
    # ESP paths from the firmware file are sbctl's own (shown without the
    # emulator root); database entries, arguments and ESP_PATH are the user's.
    esp_is_system = not any(name in ctx.env for name in ("SYSTEMD_ESP_PATH", "ESP_PATH"))
    results: list[dict[str, Any]] = []
    keys_cache: dict[str, _Key] = {}

    def verify_one(path: str, shown: str) -> None:
        log = ctx.log
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            log.warn(f"{shown} does not exist")
            results.append({"file_name": shown, "is_signed": -1})
            return
        except PermissionError:
            log.warn(f"{shown} permission denied. Can't read file\n")
            return
        except IsADirectoryError as exc:
            raise _Fail(_os_error("read", shown, exc)) from exc
        if not _check_msdos(data):
            raise _InvalidHeader(f"{shown}: invalid pe header")
        if not keys_cache:
            keys_cache.update(ctx.key_hierarchy())
        signed = _verify_file(ctx, keys_cache, path)
        if signed:
            log.ok(f"{shown} is signed")
        else:
            log.notok(f"{shown} is not signed")
        results.append({"file_name": shown, "is_signed": 1 if signed else 0})

    if args:
        for file in args:
            try:
                verify_one(file, file)
            except _InvalidHeader:
                ctx.log.error(f"{file} is not a valid EFI binary")
                return
        if ctx.opts.get("json"):
            ctx.log.json(results or None)  # Go marshals the nil slice as null
        return
    esp_shown = ctx.show(esp) if esp_is_system else esp
    ctx.log.print(f"Verifying file database and EFI images in {esp_shown}...\n")
    checked: set[str] = set()
    try:
        files = ctx.read_files_db()
    except _Fail as exc:
        raise _Fail(f"couldn't open database {ctx.show(ctx.config.files_db)}: {exc.message}") from exc
    for key in sorted(files):
        out = files[key]["output_file"]
        checked.add(_checked_key(out))
        try:
            verify_one(out, out)
        except _InvalidHeader as exc:
            raise _Fail(str(exc)) from exc
    for path in _walk(ctx, esp):
        if _checked_key(path) in checked:
            continue
        shown = ctx.show(path) if esp_is_system else path
        try:
            verify_one(path, shown)
        except _InvalidHeader:
            continue  # scanning the ESP: non-PE files are expected
        except _Fail as exc:
            ctx.log.error(f"failed to verify file {shown}: {exc.message}")
    if ctx.opts.get("json"):
        ctx.log.json(results or None)


class _InvalidHeader(Exception):
    """verify.go ErrInvalidHeader."""


def _walk(ctx: _Ctx, root: str) -> Iterator[str]:
    """afero.Walk order (lexical), yielding non-directories the way verify sees them."""
    root = posixpath.normpath(root)
    try:
        st = os.lstat(root)
    except OSError as exc:
        ctx.log.error(f"failed to read path {ctx.show(root)}: {_os_error('lstat', ctx.show(root), exc)}")
        _go_panic()
    yield from _walk_entry(ctx, root, st)


def _walk_entry(ctx: _Ctx, path: str, st: os.stat_result) -> Iterator[str]:
    import stat as statmod

    if statmod.S_ISDIR(st.st_mode):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            ctx.log.error(f"failed to read path {ctx.show(path)}: {_os_error('open', ctx.show(path), exc)}")
            return
        for name in names:
            child = posixpath.join(path, name)
            try:
                child_st = os.lstat(child)
            except OSError:
                _go_panic()
            yield from _walk_entry(ctx, child, child_st)
        return
    try:
        followed = os.stat(path)
    except OSError:
        _go_panic()  # a dangling symlink: Stat fails and sbctl uses the nil result
    if not statmod.S_ISDIR(followed.st_mode):
        yield path


def _cmd_list_files(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    try:
        files = ctx.read_files_db()
    except _Fail as exc:
        raise _Fail(f"couldn't open database {ctx.show(ctx.config.files_db)}: {exc.message}") from exc
    listed: list[dict[str, Any]] = []
    log = ctx.log
    for key in sorted(files):
        entry = files[key]
        keys = ctx.key_hierarchy()
        try:
            signed = _verify_file(ctx, keys, entry["output_file"])
        except _Fail as exc:
            log.error(f"{ctx.show(entry['output_file'])}: {exc.message}")
            log.error("")
            continue
        log.println(entry["file"])
        log.print("Signed:\t\t")
        (log.ok if signed else log.notok)("Signed" if signed else "Not Signed")
        if entry["file"] != entry["output_file"]:
            log.print(f"Output File:\t{entry['output_file']}\n")
        log.println("")
        listed.append({"file": entry["file"], "output_file": entry["output_file"], "is_signed": signed})
    if ctx.opts.get("json"):
        ctx.log.json(listed)


def _cmd_remove_file(ctx: _Ctx, opts: Opts, args: list[str]) -> None:
    if not args:
        ctx.log.println("Need to specify file")
        raise _Exit(1)
    files = ctx.read_files_db()
    if args[0] not in files:
        ctx.log.print(f"File {args[0]} doesn't exist in database!\n")
        raise _Exit(1)
    del files[args[0]]
    ctx.write_files_db(files)
    ctx.log.print(f"Removed {args[0]} from the database.\n")
