"""Can this controller read the sops files a run reads and creates? Asked once, before any change.

Without a usable age identity a run used to fail once per host with the same
sops error ("4 host(s) failed"), or worse, create encrypted files it then
could not read back, leaving the fleet half-configured. :func:`ensure` is
called the first time a run opens the sops store (before the first change)
and raises a :class:`~infratool.errors.SecretsFileError` (exit 3) that names
the file:

* every existing sops file under the secrets dir must list one of our
  identities' recipients in its sops metadata (read without decrypting, so a
  file this run does not read, tampered or not, costs nothing and blocks
  nothing; a file it does read is decrypted and MAC-checked when it is read);
* every creation rule of ``.sops.yaml`` must list a recipient of one of our
  identities, or the files it creates could not be read back. Our
  identities are found where sops looks: ``SOPS_AGE_KEY``,
  ``SOPS_AGE_KEY_FILE`` (default ``$XDG_CONFIG_HOME/sops/age/keys.txt``) and
  the SSH key sops converts (``SOPS_AGE_SSH_PRIVATE_KEY_FILE``, default
  ``~/.ssh/id_ed25519``). With ``SOPS_AGE_KEY_CMD`` the identities are not
  known without running it, so neither is checked.

A key file that group or others can read gets a warning on stderr.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infratool import yamlsrc
from infratool.errors import InputError, SecretsError, SecretsFileError
from infratool.secrets import agekeys
from infratool.secrets.secret import REDACTOR, Secret

_LOCK = threading.Lock()
_CHECKED_ATTR = "_identity_checked"


@dataclass
class Identities:
    """The age recipients of the identities sops will try, and what could not be known."""

    recipients: set[str] = field(default_factory=set)
    key_file: Path | None = None
    """The age key file sops reads (whether or not it exists)."""
    opaque: bool = False
    """``SOPS_AGE_KEY_CMD`` is set: more identities exist than we can see."""
    warnings: list[str] = field(default_factory=list)


def default_key_file(env: Mapping[str, str]) -> Path:
    """sops's key file: ``$SOPS_AGE_KEY_FILE``, else ``$XDG_CONFIG_HOME/sops/age/keys.txt``."""
    if env.get("SOPS_AGE_KEY_FILE"):
        return Path(env["SOPS_AGE_KEY_FILE"])
    config = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME") or Path.home()) / ".config")
    return config / "sops" / "age" / "keys.txt"


def _age_lines(text: str, found: set[str]) -> None:
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("AGE-SECRET-KEY-1"):
            with contextlib.suppress(InputError):
                found.add(agekeys.recipient_of(Secret(line)))


def discover(env: Mapping[str, str] | None = None) -> Identities:
    """The identities sops would try in ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    found = Identities(opaque=bool(env.get("SOPS_AGE_KEY_CMD")))
    if env.get("SOPS_AGE_KEY"):
        _age_lines(env["SOPS_AGE_KEY"], found.recipients)
    key_file = found.key_file = default_key_file(env)
    try:
        info = key_file.stat()
        text = key_file.read_text()
    except OSError:
        text = ""
    else:
        if stat.S_IMODE(info.st_mode) & 0o077:
            found.warnings.append(
                f"age key file {key_file} is mode {stat.S_IMODE(info.st_mode):04o}: others can read it "
                f"(chmod 600 {key_file})"
            )
    _age_lines(text, found.recipients)
    ssh_key = Path(
        env.get("SOPS_AGE_SSH_PRIVATE_KEY_FILE") or Path(env.get("HOME") or Path.home()) / ".ssh/id_ed25519"
    )
    with contextlib.suppress(OSError, InputError):
        found.recipients.add(
            agekeys.recipient_of(agekeys.ssh_ed25519_private_to_age_identity(ssh_key.read_bytes()))
        )
    return found


def _rules(config: Path) -> list[tuple[int | None, list[str]]]:
    """``(line, recipients)`` of each creation rule of ``.sops.yaml`` (bad YAML: InputError)."""
    data: Any = yamlsrc.load(config)
    rules = data.get("creation_rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return []
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        age = rule.get("age") or ""
        if isinstance(age, list):
            age = ",".join(str(a) for a in age)
        recipients = [r.strip() for r in str(age).replace("\n", ",").split(",") if r.strip()]
        if recipients:
            out.append((yamlsrc.line_of(rules, i), recipients))
    return out


def _sops_files(secrets_dir: Path) -> list[Path]:
    from infratool.onboard.scaffold import sops_files

    return sops_files(secrets_dir) if secrets_dir.is_dir() else []


def check(store: Any, ids: Identities | None = None) -> None:
    """Raise :class:`SecretsFileError` unless ``store``'s files can be read and created-then-read."""
    ids = ids or discover(store.env)
    for warning in ids.warnings:
        with contextlib.suppress(OSError, ValueError):
            print(f"warning: {REDACTOR.redact(warning)}", file=sys.stderr, flush=True)
    if ids.opaque:
        return
    hint = (
        f"set SOPS_AGE_KEY_FILE to an identity whose recipient is listed there ({ids.key_file} has none)"
        if not ids.recipients
        else "add one of your recipients to it, or set SOPS_AGE_KEY_FILE to the right identity"
    )
    for path in _sops_files(store.repo):
        try:
            listed = set(store.recipients(path))
        except (InputError, SecretsError):
            continue  # malformed metadata: reported when (if) this run reads the file
        if listed and not ids.recipients & listed:
            raise SecretsFileError(
                f"none of your age identities is a recipient of this file, so it cannot be decrypted; {hint}",
                file=store.display(path),
            )
    if not store.config.is_file():
        return
    for line, recipients in _rules(store.config):
        if not ids.recipients & set(recipients):
            raise SecretsFileError(
                f"none of your age identities is a recipient of this creation rule: files it creates "
                f"could not be read back; {hint}",
                file=store.config,
                line=line,
            )


def ensure(store: Any) -> None:
    """:func:`check` once per store (thread-safe): the first sops access of a run pays for it."""
    with _LOCK:
        if getattr(store, _CHECKED_ATTR, False):
            return
        check(store)
        setattr(store, _CHECKED_ATTR, True)
