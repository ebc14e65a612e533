"""Remote builders (DESIGN.md capability 2): per-client builder keys and the Nix config around them.

Tasks (registered on import):

* ``remote_builders.setup`` — keys in sops, the builder's ``authorized_keys``
  restricted to the Nix daemon, ``trusted-users``, the clients'
  ``/etc/nix/machines`` with pinned host keys (NixOS: generated modules),
  verified by a real ``nix store ping`` and a real remote build.
* ``remote_builders.check`` — the verification alone.

Each client's key is a rotation of the ``builder-key`` kind
(:mod:`.rotation`): ``infratool secrets status`` shows its age and
``infratool secrets rotate builder-key/<client>`` rotates it on the one
rotation engine. See ``docs/remote-builders.md``.

Modules: :mod:`.spec` (parameters → topology), :mod:`.render` (file lines,
NixOS modules), :mod:`.keys` (sops), :mod:`.verify` (ping and build),
:mod:`.common` (what both tasks share), :mod:`.setup` (plan and phases),
:mod:`.builder_side` (the builders' part of setup),
:mod:`.rotation` (the builder-key kind), :mod:`.check`.
"""

from infratool.tasks.remote_builders.check import Check
from infratool.tasks.remote_builders.keys import ClientKey, stored_key
from infratool.tasks.remote_builders.setup import Setup
from infratool.tasks.remote_builders.spec import SECRETS_FILE, Builder, Topology, secret_key

__all__ = [
    "SECRETS_FILE",
    "Builder",
    "Check",
    "ClientKey",
    "Setup",
    "Topology",
    "secret_key",
    "stored_key",
]
