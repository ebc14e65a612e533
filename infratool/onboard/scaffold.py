"""Starting a fleet repo's secrets: an operator age key and ``.sops.yaml``.

Used by ``infratool init`` and by the lab (whose flake repo needs the same
layout). The private key goes to a 0600 file and is never printed; only its
public recipient appears in ``.sops.yaml``.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime
from pathlib import Path

from infratool.context import write_atomic

SOPS_CONFIG = """\
# sops creation rules: which age recipients every secrets file is encrypted to.
# sops-nix hosts decrypt with their SSH host key converted to age (ssh-to-age);
# `infratool host add` appends them, `infratool secrets recover init` adds the
# backup (mnemonic) recipient.
creation_rules:
  - path_regex: .*\\.ya?ml$
    age: >-
      {recipients}
"""


def default_key_file() -> Path:
    """sops's standard location for age identities."""
    env = os.environ.get("SOPS_AGE_KEY_FILE")
    if env:
        return Path(env)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "sops" / "age" / "keys.txt"


def new_age_key(key_file: Path) -> str:
    """Write a new age identity to ``key_file`` (0600, age-keygen's format); return its recipient."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(key_file, text.encode(), 0o600)
    return recipient


def recipient_of_key_file(key_file: Path) -> str:
    """The recipient of the (first) identity in an age key file."""
    import pyrage

    for line in key_file.read_text().splitlines():
        if line.startswith("AGE-SECRET-KEY-"):
            return str(pyrage.x25519.Identity.from_str(line.strip()).to_public())
    raise ValueError(f"{key_file}: no age identity")


def init_secrets(secrets_dir: Path, recipients: list[str]) -> Path:
    """Write ``secrets_dir/.sops.yaml`` for ``recipients`` (unless it exists); return its path."""
    config = secrets_dir / ".sops.yaml"
    if not config.exists():
        secrets_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(config, SOPS_CONFIG.format(recipients=",".join(recipients)).encode())
    return config


def ensure_operator_repo(flake: Path, key_file: Path) -> str:
    """A flake repo with secrets/.sops.yaml and an operator key (created if missing); the recipient."""
    recipient = recipient_of_key_file(key_file) if key_file.exists() else new_age_key(key_file)
    init_secrets(flake / "secrets", [recipient])
    return recipient


def _rule_recipients(rule) -> list[str]:
    return [r.strip() for r in str(rule.get("age") or "").replace("\n", ",").split(",") if r.strip()]


def _edit_rules(config: Path, edit) -> bool:
    """Apply ``edit(recipients) -> recipients`` to every creation rule; whether anything changed."""
    from ruamel.yaml import YAML

    from infratool import yamlsrc

    text = config.read_text()
    yamlsrc.load_plain(text, config)  # aliases and bad YAML: InputError at file:line, nothing written
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(text)
    changed = False
    for rule in data.get("creation_rules") or []:
        before = _rule_recipients(rule)
        after = list(dict.fromkeys(edit(before)))
        if after != before:
            rule["age"] = ",".join(after)
            changed = True
    if changed:
        buf = io.StringIO()
        yaml.dump(data, buf)
        write_atomic(config, buf.getvalue().encode())
    return changed


def add_sops_recipient(config: Path, recipient: str) -> bool:
    """Add ``recipient`` to every creation rule of ``.sops.yaml`` (idempotent); whether it changed.

    Every rule, because the recipient (the backup identity) must be able to
    read every file, whichever rule encrypted it (per-host rules included).
    """
    return _edit_rules(config, lambda rs: [*rs, recipient])


def remove_sops_recipient(config: Path, recipient: str) -> bool:
    """Remove ``recipient`` from every creation rule of ``.sops.yaml``; whether it changed."""
    return _edit_rules(config, lambda rs: [r for r in rs if r != recipient])


def sops_files(secrets_dir: Path) -> list[Path]:
    """Every sops-encrypted YAML file under ``secrets_dir`` (files with a ``sops:`` block)."""
    found = []
    for path in sorted(secrets_dir.rglob("*.y*ml")):
        if path.name.startswith("."):
            continue
        try:
            head = path.read_text(errors="replace")
        except OSError:
            continue
        if "\nsops:\n" in head or head.startswith("sops:\n"):
            found.append(path)
    return found
