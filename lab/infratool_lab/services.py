"""Real services inside lab hosts, whose secrets the rotation playbooks rotate.

- **PostgreSQL** on brix: a private cluster under ``/var/lib/postgresql/lab``
  listening on brix's loopback address and on ``/run/postgresql``; role
  ``app`` logs in with a password (scram-sha-256). Rotation sets it with
  ``ALTER ROLE`` fed on stdin and verifies by logging in with it.
- **tokend** on slax (:mod:`infratool_lab.tokend`): HTTP that demands a
  bearer token read from ``/var/lib/tokend/token``, reread on SIGHUP. On a
  NixOS-shaped slax (``lab up --nixos``) it is a NixOS unit instead, as it
  would be on the real host: ``hosts/slax/tokend.nix`` in the lab flake
  (imported by the host's ``configuration.nix``) runs it on the token
  sops-nix installs at ``/run/secrets/tokend/token``, and the policy's
  consumer names that path and ``units: [tokend.service]`` (sops-nix
  restarts it when the value changes). The unit starts with the host's next
  deploy.

:func:`provision` starts both (idempotently) and writes the lab flake repo's
``secrets/rotation.yaml`` naming them. Initial credentials go in through
stdin or files, like everything secret.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from infratool_lab.fleet import Lab

POSTGRES_HOST = "brix"
TOKEND_HOST = "slax"
TOKEND_PORT = 8081

_POSTGRES = r"""
set -e
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
data=/var/lib/postgresql/lab
mkdir -p /var/lib/postgresql /run/postgresql /var/log/postgresql
chown postgres:postgres /var/lib/postgresql /run/postgresql /var/log/postgresql
if [ ! -s "$data/PG_VERSION" ]; then
  runuser -u postgres -- "$bin/initdb" -D "$data" --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  cat > "$data/pg_hba.conf" <<'HBA'
local all postgres peer
local all all scram-sha-256
host  all all 0.0.0.0/0 scram-sha-256
HBA
fi
if ! runuser -u postgres -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  runuser -u postgres -- "$bin/pg_ctl" -D "$data" -w -l /var/log/postgresql/lab.log \
    -o "-c listen_addresses=$1 -c unix_socket_directories=/run/postgresql -c port=5432" start >/dev/null
fi
# The role and its first password; the password arrives on stdin (never argv).
exists=$(runuser -u postgres -- psql -h /run/postgresql -tAc "select 1 from pg_roles where rolname='app'")
if [ "$exists" != 1 ]; then
  read -r password
  printf "CREATE ROLE app LOGIN PASSWORD '%s';\n" "$password" |
    runuser -u postgres -- psql -h /run/postgresql -v ON_ERROR_STOP=1 -q -f -
fi
"""

_TOKEND = r"""
set -e
mkdir -p /var/lib/tokend
if [ ! -s /var/lib/tokend/token ]; then
  (umask 077; cat > /var/lib/tokend/token)
fi
if [ -s /run/tokend.pid ] && kill -0 "$(cat /run/tokend.pid)" 2>/dev/null; then exit 0; fi
nohup /usr/bin/python3 /var/lib/tokend/tokend.py --token-file /var/lib/tokend/token \
  --listen "$1:$2" --pid-file /run/tokend.pid >/var/log/tokend.log 2>&1 </dev/null &
for _ in $(seq 100); do [ -s /run/tokend.pid ] && exit 0; sleep 0.05; done
echo "tokend did not start" >&2; exit 1
"""

POLICY = """\
# Rotation policy of the lab fleet (written by `infratool lab up`).
secrets:
  postgres/app:
    file: secrets/lab.yaml
    generator: password
    params: {{length: 32}}
    max_age: 30d
    consumers:
      - host: {pg_host}
        command:
          run: runuser -u postgres -- psql -h /run/postgresql -v ON_ERROR_STOP=1 -q -f -
          stdin: "ALTER ROLE app PASSWORD '{{value}}';"
        verify: >-
          read -r PGPASSWORD && export PGPASSWORD &&
          psql "host={pg_address} user=app dbname=postgres" -tAc 'select 1' | grep -qx 1
  tokend/token:
    file: secrets/lab.yaml
    generator: hex
    params: {{bytes: 24}}
    max_age: 7d
    consumers:
      - host: {tok_host}
{tok_delivery}
        verify: >-
          read -r token &&
          printf 'Authorization: Bearer %s\\n' "$token" |
          curl -fsS -o /dev/null -H @- http://{tok_address}:{tok_port}/
"""


# How the token reaches tokend: a file and SIGHUP, or (NixOS) sops-nix and a restart.
_TOKEND_LINUX = (
    '        file: {path: /var/lib/tokend/token, mode: "0600"}\n'
    '        reload: kill -HUP "$(cat /run/tokend.pid)"'
)
_TOKEND_NIXOS = (
    '        file: {path: /run/secrets/tokend/token, mode: "0400"}\n        units: [tokend.service]'
)

TOKEND_MODULE = """\
# tokend as a NixOS unit (written by `infratool lab up --nixos`): its token is the
# one sops-nix installs, and restartUnits in the generated module restarts it.
{{ ... }}:
{{
  systemd.services.tokend = {{
    description = "tokend: HTTP that demands the bearer token sops-nix installs";
    wantedBy = [ "multi-user.target" ];
    script = "exec /usr/bin/python3 /var/lib/tokend/tokend.py --token-file /run/secrets/tokend/token --listen {address}:{port} --pid-file /run/tokend.pid";
  }};
}}
"""


def start_postgres(lab: Lab, host: str = POSTGRES_HOST) -> None:
    """Start the lab's PostgreSQL on ``host`` with role ``app`` (first password random)."""
    address = lab.host(host).address
    first = secrets.token_hex(16).encode() + b"\n"
    lab.exec(host, ["/bin/sh", "-c", _POSTGRES, "pg", address], input=first, check=True)


def start_tokend(lab: Lab, host: str = TOKEND_HOST) -> None:
    """Start tokend on ``host`` (first token random).

    The script is copied into the host's private /var/lib and run by the
    system Python: the controller's virtualenv may live under /root or /tmp,
    which lab hosts do not share.
    """
    lab_host = lab.host(host)
    script = lab_host.path("/var/lib/tokend/tokend.py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(Path(__file__).with_name("tokend.py").read_text())
    if lab_host.nixos:
        _tokend_unit(lab, host)
        return
    first = secrets.token_hex(16).encode() + b"\n"
    lab.exec(
        host,
        ["/bin/sh", "-c", _TOKEND, "tokend", lab_host.address, str(TOKEND_PORT)],
        input=first,
        check=True,
    )


def _tokend_unit(lab: Lab, host: str) -> None:
    """Make tokend a unit of NixOS host ``host``: ``hosts/<host>/tokend.nix``, imported by its configuration.

    The import is added to a ``configuration.nix`` the lab wrote and nobody
    changed since; an edited one is the operator's and is left alone.
    """
    from infratool_lab import nixos as labnixos

    lab_host = lab.host(host)
    conf_dir = lab.flake_dir / "hosts" / host
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "tokend.nix").write_text(TOKEND_MODULE.format(address=lab_host.address, port=TOKEND_PORT))
    conf = conf_dir / "configuration.nix"
    if not conf.exists() or conf.read_text() == labnixos.host_configuration(host):
        conf.write_text(labnixos.host_configuration(host, imports=["./tokend.nix"]))


def policy_text(
    pg_host: str,
    pg_address: str,
    tok_host: str,
    tok_address: str,
    tok_port: int = TOKEND_PORT,
    *,
    tok_nixos: bool = False,
) -> str:
    """The rotation policy for PostgreSQL on ``pg_host`` and tokend on ``tok_host``.

    ``tok_nixos`` picks how the token reaches tokend: a file and SIGHUP, or
    sops-nix's ``/run/secrets`` and a unit restart.
    """
    return POLICY.format(
        pg_host=pg_host,
        pg_address=pg_address,
        tok_host=tok_host,
        tok_delivery=_TOKEND_NIXOS if tok_nixos else _TOKEND_LINUX,
        tok_address=tok_address,
        tok_port=tok_port,
    )


def write_policy(lab: Lab) -> Path:
    """The lab flake repo's ``secrets/rotation.yaml`` for these services."""
    path = lab.flake_dir / "secrets" / "rotation.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tokend = lab.host(TOKEND_HOST)
    path.write_text(
        policy_text(
            POSTGRES_HOST,
            lab.host(POSTGRES_HOST).address,
            TOKEND_HOST,
            tokend.address,
            tok_nixos=tokend.nixos,
        )
    )
    return path


def provision(lab: Lab) -> None:
    """Start the lab's services (where their hosts exist) and write the rotation policy."""
    names = {h.name for h in lab.hosts()}
    if {POSTGRES_HOST, TOKEND_HOST} <= names:
        start_postgres(lab)
        start_tokend(lab)
        write_policy(lab)


def add_nixos_recipients(lab: Lab) -> list[str]:
    """Make NixOS hosts recipients of the flake's secrets, as ``infratool host add`` does; the ones added.

    sops-nix on a NixOS host decrypts with the host's SSH key converted to
    age, so ``secrets/.sops.yaml`` names that recipient.
    """
    from infratool.onboard.scaffold import add_sops_recipient
    from infratool.secrets.agekeys import ssh_ed25519_to_age_recipient

    config = lab.flake_dir / "secrets" / ".sops.yaml"
    added = []
    for host in lab.hosts():
        if host.nixos:
            recipient = ssh_ed25519_to_age_recipient(host.host_key_public)
            if add_sops_recipient(config, recipient):
                added.append(recipient)
    return added


def prepare_fleet(lab: Lab) -> Path:
    """Everything `infratool lab up` adds to running hosts; returns the operator's age key file.

    The lab's flake repo gets ``secrets/.sops.yaml`` and an operator age key
    (like ``infratool init``) naming the NixOS hosts' keys too, the hosts get their services (PostgreSQL,
    tokend) and the rotation policy naming them, and snix/slax/brix get the
    sbctl emulator.
    """
    from infratool.onboard.scaffold import ensure_operator_repo
    from infratool_lab.sbctl import provision_lab

    key_file = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key_file)
    add_nixos_recipients(lab)
    provision(lab)
    provision_lab(lab)
    return key_file
