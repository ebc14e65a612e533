"""The environment of commands infratool starts on the controller: an allowlist, not a copy.

The controller's environment holds what the operator's shell holds:
``SOPS_AGE_KEY`` (an age identity in clear), cloud and Vault tokens,
``INFRATOOL_*`` settings. A notify command (``ntfy-send ...``, a webhook
script from the policy) or a deploy command needs none of that, and a policy
is written by whoever can push to the fleet repo. So these commands get an
explicit, minimal environment, as systemd gives a service (``env -i`` plus
what the unit names), never ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

DEFAULT_PATH = "/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin"
BASE = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
"""What any program expects to find: where programs are, who and where the user is, locale."""
DEPLOY = ("SSH_AUTH_SOCK", "NIX_PATH", "NIX_SSHOPTS", "NIX_REMOTE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
"""What a local deploy (``nixos-rebuild --target-host``, ``nix copy``) needs on top: ssh and Nix settings."""


def minimal_env(extra: Iterable[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """``BASE`` (plus the names in ``extra``) taken from ``source`` (default ``os.environ``)."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in (*BASE, *extra) if name in source}
    env.setdefault("PATH", DEFAULT_PATH)
    return env
