"""Binary cache (DESIGN.md capability 3): a signed Nix binary cache served over HTTP.

Tasks (each module registers one):

* ``binary_cache.server``     — :mod:`.server`: signing key, cache dir, nginx, post-build hook
* ``binary_cache.client``     — :mod:`.client`: substituters + trusted keys, flake nixConfig
* ``binary_cache.push``       — :mod:`.push`: copy paths / flake outputs into the cache, signed
* ``binary_cache.rotate_key`` — :mod:`.rotate`: key rotation with overlap, resumable

Shared pieces: :mod:`.spec` (parameters, paths), :mod:`.keys` (sops + state
file), :mod:`.filetext` (file contents), :mod:`.scripts` (remote shell),
:mod:`.kind` (the ``cache-key`` rotation kind for ``secrets status/rotate``).
See docs/binary-cache.md.
"""

from infratool.tasks.binary_cache import client, kind, push, rotate, server
from infratool.tasks.binary_cache.keys import Keys, load_keys
from infratool.tasks.binary_cache.spec import CacheSpec

__all__ = [
    "CacheSpec",
    "Keys",
    "client",
    "kind",
    "load_keys",
    "push",
    "rotate",
    "server",
]
