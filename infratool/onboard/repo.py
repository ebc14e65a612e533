"""``infratool init``: scaffold a fleet repo (inventory, playbooks, sops rules, README).

Nothing existing is ever overwritten: if any file it would write exists, it
refuses before writing anything. The operator's age key goes to sops's
standard location (0600) and is reused when already there; only its public
recipient is printed or written into ``secrets/.sops.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infratool import inventory as inv
from infratool.context import write_atomic
from infratool.errors import InputError
from infratool.onboard.hostsfile import scalar
from infratool.onboard.scaffold import init_secrets, new_age_key, recipient_of_key_file

SOPS_CONFIG_NAME = ".sops.yaml"

HOSTS_YAML = """\
# Inventory of this fleet, read by every infratool command.
#
# `infratool host add NAME --address ADDRESS` adds a host: it shows the SSH
# host key the machine offers, pins it (host_key:) once you confirm, and makes
# the host a sops recipient of secrets/NAME.yaml and secrets/common.yaml.
# `infratool host remove NAME` undoes both. Comments and order here are kept.
defaults:
  user: root                    # login user on every host
  port: 22
  {ssh_key_setting}# identity used to log in
  flake: .                      # this repo: generated Nix and secrets/ live here
  {os_setting}# nixos: declarative, through the flake | linux: files over SSH
  # deploy_command: nixos-rebuild switch --flake {{flake}}#{{host}} --target-host {{user}}@{{address}}
hosts:
  # What `infratool host add` writes, for example:
  #   web1:
  #     address: web1.home.arpa
  #     tags: [server]
  #     host_key: "ssh-ed25519 AAAA..."
"""

SITE_YAML = """\
name: site
description: Everything this fleet runs, in order; add your playbooks below
hosts: all
tasks:
  - include: baseline.yaml
  # - include: secrets-rotation.yaml
"""

BASELINE_YAML = """\
name: baseline
description: Nix settings every host needs, and a marker saying infratool manages the host
hosts: all
tasks:
  - task: nix.settings
    with:
      settings:
        experimental-features: [nix-command, flakes]
        auto-optimise-store: true
  - task: files.content
    with:
      path: /var/lib/infratool/managed-by
      content: |
        This host is managed by infratool. Local changes to managed files are
        overwritten on the next run; see the fleet repo's playbooks/.
      mode: "0644"
"""

README_MD = """\
# {name}: a fleet managed by infratool

```
hosts.yaml              the machines (pinned host keys); `infratool host add|remove`
playbooks/site.yaml     what runs on them; `infratool plan playbooks/site.yaml`
playbooks/baseline.yaml nix settings and a marker file on every host
secrets/.sops.yaml      who can decrypt which secrets file (sops creation rules)
```

Start:

```sh
infratool host add web1 --address web1.home.arpa     # shows the host key, asks, pins it
infratool hosts --check                               # every host reachable with its pinned key
infratool plan playbooks/site.yaml                    # what would change (touches nothing)
infratool run playbooks/site.yaml                     # apply after confirming
```

Secrets (sops + age): `secrets/<host>.yaml` is readable by the operator keys
and that host, `secrets/common.yaml` by every host, anything else by the
operators only. Hosts decrypt with their SSH ed25519 host key (sops-nix).
The operator's age key lives outside this repo (sops's default
`~/.config/sops/age/keys.txt`): back it up.
"""


@dataclass(frozen=True)
class InitResult:
    """What ``infratool init`` did."""

    directory: Path
    created: list[Path]
    key_file: Path
    key_created: bool
    recipient: str
    """The operator's age recipient (public); the private key is never returned."""


def init_repo(
    directory: Path, key_file: Path, ssh_key: str = "~/.ssh/id_ed25519", os_kind: str = "nixos"
) -> InitResult:
    """Scaffold a fleet repo in ``directory``; refuse (writing nothing) if any of its files exist.

    The operator age key at ``key_file`` is created (0600) if missing and
    reused if present — overwriting it would lock the operator out of every
    repo already encrypted to it.
    """
    if os_kind not in inv.OS_KINDS:
        raise InputError(f"--os must be one of {', '.join(inv.OS_KINDS)}, got {os_kind!r}")
    if "\n" in ssh_key or not ssh_key.strip():
        raise InputError("--ssh-key must be a path")
    files: dict[Path, str] = {
        directory / "hosts.yaml": HOSTS_YAML.format(
            ssh_key_setting=f"ssh_key: {scalar(ssh_key)}".ljust(29) + " ",
            os_setting=f"os: {os_kind}".ljust(29) + " ",
        ),
        directory / "playbooks" / "site.yaml": SITE_YAML,
        directory / "playbooks" / "baseline.yaml": BASELINE_YAML,
        directory / "README.md": README_MD.format(name=directory.resolve().name or "fleet"),
    }
    sops_config = directory / "secrets" / SOPS_CONFIG_NAME
    existing = [p for p in [*files, sops_config] if p.exists() or p.is_symlink()]
    if existing:
        raise InputError(
            "refusing to overwrite existing files: " + ", ".join(str(p) for p in existing),
            file=existing[0],
        )
    if key_file.exists():
        try:
            recipient = recipient_of_key_file(key_file)
        except (ValueError, OSError) as exc:
            raise InputError(f"not an age key file ({exc})", file=key_file) from None
        key_created = False
    else:
        recipient = new_age_key(key_file)
        key_created = True
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode())
    init_secrets(sops_config.parent, [recipient])
    return InitResult(directory, [*files, sops_config], key_file, key_created, recipient)
