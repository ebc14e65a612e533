"""Remote builders (DESIGN.md capability 2): per-client builder keys and the Nix config around them.

Tasks (registered on import):

* ``remote_builders.setup`` — keys in sops, the builder's ``authorized_keys``
  restricted to the Nix daemon, ``trusted-users``, the clients'
  ``/etc/nix/machines`` with pinned host keys (NixOS: generated modules),
  verified by a real ``nix store ping`` and a real remote build.
* ``remote_builders.check`` — the verification alone.

For ``infratool secrets rotate``: :func:`rotate_client_key` stores a new key;
the next setup run installs it and revokes the old one. See
``docs/remote-builders.md``.

Modules: :mod:`.spec` (parameters → topology), :mod:`.render` (file lines,
NixOS modules), :mod:`.keys` (sops), :mod:`.verify` (ping and build),
:mod:`.common` (what both tasks share), :mod:`.setup` (plan and phases), :mod:`.check`.
"""

from infratool.tasks.remote_builders.check import Check
from infratool.tasks.remote_builders.keys import ClientKey, rotate_client_key, stored_key
from infratool.tasks.remote_builders.setup import Setup
from infratool.tasks.remote_builders.spec import SECRETS_FILE, Builder, Topology, secret_key

__all__ = [
    "SECRETS_FILE",
    "Builder",
    "Check",
    "ClientKey",
    "Setup",
    "Topology",
    "rotate_client_key",
    "secret_key",
    "stored_key",
]
