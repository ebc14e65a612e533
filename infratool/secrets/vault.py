"""``generator: vault``: a dynamic secret read from Vault's HTTP API, through ``hvac``.

A read of a dynamic path (``database/creds/app``, ``aws/creds/deploy``...)
makes Vault issue a new credential under a **lease**: the response's
``lease_id`` and ``lease_duration`` (seconds). The rotation engine keeps the
lease id encrypted in the sops file beside the value, takes the lease
duration as the secret's max age (or the policy's ``max_age`` if shorter),
and **revokes the previous lease** (``PUT /v1/sys/leases/revoke``) only after
the new credential is delivered, verified and promoted. A failed verify
revokes the *new* lease instead; the previous one stays valid.

Address: ``addr`` or ``$VAULT_ADDR``. Token: ``$VAULT_TOKEN`` or
``~/.vault-token`` (as the vault CLI), never the policy file. Response bodies
are never logged or put in errors: only the HTTP status and Vault's
``errors`` list.

Written against Vault's documented API and tested against a test server that
implements it (tests/vaultserver.py); it has not been run against a real Vault.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infratool.errors import SecretsError
from infratool.secrets.derive import PLACEHOLDER
from infratool.secrets.secret import REDACTOR, Secret


@dataclass(frozen=True)
class Issued:
    """A credential Vault issued: the value, its lease id, and the lease's duration (s)."""

    value: Secret
    lease_id: Secret
    ttl: int


def _token() -> str | None:
    token = os.environ.get("VAULT_TOKEN")
    if token:
        return token
    path = Path.home() / ".vault-token"
    return path.read_text().strip() if path.is_file() else None


def _client(params: Mapping[str, Any]):  # -> hvac.Client (lazily imported)
    import hvac  # lazily: requests and hvac are slow to import and only this generator needs them

    addr = params.get("addr") or os.environ.get("VAULT_ADDR")
    if not addr:
        raise SecretsError("generator vault: no Vault address (set params.addr or $VAULT_ADDR)")
    token = _token()
    if not token:
        raise SecretsError("generator vault: no token ($VAULT_TOKEN or ~/.vault-token)")
    REDACTOR.register(token)
    verify: bool | str = params.get("ca_cert") or True
    return hvac.Client(url=addr, token=token, verify=verify, timeout=params.get("timeout", 30))


def _failed(what: str, exc: Exception) -> SecretsError:
    """A Vault or transport error as a SecretsError without the response body."""
    import hvac.exceptions
    import requests

    if isinstance(exc, hvac.exceptions.VaultError):
        errors = ", ".join(str(e) for e in exc.errors or [])[:200]
        detail = type(exc).__name__ + (f" ({errors})" if errors else "")
    elif isinstance(exc, requests.RequestException):
        detail = f"cannot reach Vault ({type(exc).__name__})"
    else:
        detail = type(exc).__name__
    return SecretsError(REDACTOR.redact(f"Vault {what}: {detail}"))


def _errors() -> tuple[type[Exception], ...]:
    import hvac.exceptions
    import requests

    return (hvac.exceptions.VaultError, requests.RequestException, ValueError)


def read(params: Mapping[str, Any], name: str) -> Issued:
    """Read ``params['path']``: a new credential and its lease."""
    client = _client(params)
    path = params["path"]
    try:
        response = client.read(path)
    except _errors() as exc:
        raise _failed(f"read {path} for {name}", exc) from None
    if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
        raise SecretsError(f"Vault read {path} for {name}: no secret at that path")
    data = response["data"]
    lease_id, ttl = response.get("lease_id"), response.get("lease_duration")
    # Register every string first: whatever happens next, none of it can be printed.
    for v in (*data.values(), lease_id):
        if isinstance(v, str):
            REDACTOR.register(v)
    if not lease_id or not isinstance(ttl, int) or ttl <= 0:
        raise SecretsError(
            f"Vault read {path} for {name}: the response has no lease (a static secret? "
            "use generator: command with `vault kv get` for those)"
        )
    template = params.get("template")
    if template:
        missing = [k for k in (m.group(1) for m in PLACEHOLDER.finditer(template)) if k not in data]
        if missing:
            raise SecretsError(f"Vault read {path} for {name}: the response has no field {missing[0]!r}")
        value = PLACEHOLDER.sub(lambda m: str(data[m.group(1)]), template)
    else:
        field = params["field"]
        if not isinstance(data.get(field), str):
            raise SecretsError(f"Vault read {path} for {name}: the response has no text field {field!r}")
        value = data[field]
    return Issued(Secret(value), Secret(lease_id), ttl)


def revoke(params: Mapping[str, Any], lease_id: Secret) -> None:
    """Revoke a lease (``PUT /v1/sys/leases/revoke``); :class:`SecretsError` if Vault refuses."""
    client = _client(params)
    raw = lease_id.reveal()
    try:
        client.sys.revoke_lease(raw.decode() if isinstance(raw, bytes) else raw)
    except _errors() as exc:
        raise _failed("revoke of the previous lease", exc) from None
