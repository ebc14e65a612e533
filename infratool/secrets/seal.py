"""Seal and unseal the secret values of a saved plan with the real sops binary.

A plan file carries generated material (a new key, a new password) so that
what the operator reviewed is what gets applied. Those values never sit in
the file in clear: they are one sops-encrypted JSON document, encrypted by the
fleet repo's ``secrets/.sops.yaml`` creation rules as if it were the file
``secrets/infratool-plan.sealed.yaml`` — a name no host rule matches, so the
recipients are the operators' (and the backup identity's), never a host's.
Unsealing needs an operator identity, as reading any fleet secret does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

from infratool.errors import SecretsError
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore

SEALED_NAME = "infratool-plan.sealed.yaml"
"""The path (inside ``secrets/``) whose creation rule chooses a plan's recipients."""


def seal(values: Mapping[str, Secret], secrets_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """Encrypt ``{id: Secret}`` into one sops JSON document (the plan file's ``sealed`` field)."""
    doc = {}
    for key, value in values.items():
        raw = value.reveal()
        doc[key] = {"b64": base64.b64encode(raw).decode()} if isinstance(raw, bytes) else {"text": raw}
    store = SopsStore(secrets_dir, env=env)
    if not store.config.is_file():
        raise SecretsError(f"no {store.config}: cannot choose the recipients to seal the plan's secrets for")
    return store.encrypt_as(SEALED_NAME, json.dumps(doc).encode()).decode()


def unseal(sealed: str, secrets_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, Secret]:
    """Decrypt a plan's ``sealed`` document back into ``{id: Secret}``."""
    out = SopsStore(secrets_dir, env=env).decrypt_as(SEALED_NAME, sealed.encode())
    try:
        doc = json.loads(out)
    except ValueError:
        raise SecretsError("the plan's sealed secrets do not decrypt to JSON") from None
    finally:
        del out
    values: dict[str, Secret] = {}
    for key, entry in doc.items():
        if not isinstance(entry, dict):
            raise SecretsError(f"the plan's sealed secret {key!r} is malformed")
        if "b64" in entry:
            values[key] = Secret(base64.b64decode(entry["b64"]))
        else:
            values[key] = Secret(str(entry.get("text", "")))
    return values
