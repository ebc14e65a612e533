"""Secret sources on the lab (issue 18): real pass, real nginx, real PostgreSQL, HTTP Vault stand-in.

- a ``command`` generator backed by a real ``pass`` store rotates tokend's token;
- a password and its bcrypt htpasswd rotate together: PostgreSQL accepts the
  password, nginx basic auth (reading the htpasswd file) accepts it too;
- a WireGuard key's public part lands on a peer host;
- a value set with ``secrets set --stdin`` is delivered, its age shown; when
  due it is reported as needing a person (status, notify, ``rotate --due``
  exit 2);
- ``generator: vault`` against tests/vaultserver.py: a new lease is delivered
  and verified, the previous one revoked; a failed verify keeps the old lease.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import vaultserver
import yaml
from helpers import tokend_accepts
from infratool_lab import services

from infratool.secrets.store import SopsStore

WEB_PORT = 8088

NGINX_CONF = """\
daemon on;
user www-data;
worker_processes 1;
pid /run/web-nginx.pid;
error_log /var/log/web-nginx.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path /var/lib/web/tmp/body;
    proxy_temp_path /var/lib/web/tmp/proxy;
    fastcgi_temp_path /var/lib/web/tmp/fastcgi;
    uwsgi_temp_path /var/lib/web/tmp/uwsgi;
    scgi_temp_path /var/lib/web/tmp/scgi;
    server {{
        listen {address}:{port};
        root /var/lib/web/www;
        location / {{
            auth_basic "lab";
            auth_basic_user_file /var/lib/web/htpasswd;
        }}
    }}
}}
"""


@pytest.fixture
def lab3(lab_factory, monkeypatch):
    """snix, slax, brix with the flake repo's sops set-up (as the ``fleet`` fixture, one host less)."""
    from infratool.onboard.scaffold import ensure_operator_repo

    lab = lab_factory(3)
    key = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    return lab


def start_nginx(lab, host: str) -> None:
    """nginx on ``host`` serving a page behind basic auth from /var/lib/web/htpasswd."""
    address = lab.host(host).address
    lab.exec(
        host,
        "set -e; mkdir -p /var/lib/web/www /var/lib/web/tmp; echo ok > /var/lib/web/www/index.html; "
        "chmod 0755 /var/lib/web /var/lib/web/www; cat > /var/lib/web/nginx.conf; "
        "/usr/sbin/nginx -e /var/log/web-nginx.log -c /var/lib/web/nginx.conf >/dev/null 2>&1",
        input=NGINX_CONF.format(address=address, port=WEB_PORT).encode(),
        check=True,
    )


def nginx_accepts(lab, host: str, user: str, password: str) -> bool:
    address = lab.host(host).address
    r = lab.exec(
        host,
        f'read -r pw; printf \'user = "{user}:%s"\\n\' "$pw" | '
        f"curl -fsS -o /dev/null -K - http://{address}:{WEB_PORT}/",
        input=password.encode() + b"\n",
    )
    return r.returncode == 0


def pg_login(lab, host: str, password: str) -> bool:
    address = lab.host(host).address
    r = lab.exec(
        host,
        f"read -r PGPASSWORD; export PGPASSWORD; psql 'host={address} user=app dbname=postgres' -tAc 'select 1'",
        input=password.encode() + b"\n",
    )
    return r.returncode == 0 and r.stdout.strip() == b"1"


def values(lab) -> dict[str, str]:
    store = SopsStore(lab.flake_dir / "secrets")
    if not store.exists("sources.yaml"):
        return {}
    store.invalidate("sources.yaml")
    return {k: str(v.reveal()) for k, v in store.read("sources.yaml").items()}


def write_policy(lab, policy: dict) -> None:
    path = lab.flake_dir / "secrets" / "rotation.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def new_pass_store(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PASSWORD_STORE_DIR": str(tmp_path / "pass")}
    full = {**os.environ, **env}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "lab@example.org",
            "default",
            "default",
            "never",
        ],
        env=full,
        check=True,
        capture_output=True,
    )
    subprocess.run(["pass", "init", "lab@example.org"], env=full, check=True, capture_output=True)
    return env


def test_pass_bcrypt_htpasswd_and_wireguard(lab3, cli, tmp_path):
    lab = lab3
    pg, web, tok, peer = "brix", "brix", "slax", "slax"
    services.start_postgres(lab, pg)
    services.start_tokend(lab, tok)
    start_nginx(lab, web)
    pass_env = new_pass_store(tmp_path)
    pg_addr, tok_addr, web_addr = (lab.host(h).address for h in (pg, tok, web))
    write_policy(
        lab,
        {
            "secrets": {
                "tokend/token": {
                    "file": "secrets/sources.yaml",
                    "generator": "command",
                    "params": {
                        # A store that rotates in place: the name comes on stdin's first line.
                        "run": 'read -r name; pass generate -f "$name" 32 >/dev/null && pass show "$name" | head -n 1',
                        "env": ["GNUPGHOME", "PASSWORD_STORE_DIR"],
                    },
                    "consumers": [
                        {
                            "host": tok,
                            "file": {"path": "/var/lib/tokend/token", "mode": "0600"},
                            "reload": 'kill -HUP "$(cat /run/tokend.pid)"',
                            "verify": "read -r t && printf 'Authorization: Bearer %s\\n' \"$t\" | "
                            f"curl -fsS -o /dev/null -H @- http://{tok_addr}:{services.TOKEND_PORT}/",
                        }
                    ],
                },
                "web/password": {
                    "file": "secrets/sources.yaml",
                    "generator": "password",
                    "params": {"length": 32},
                    "consumers": [
                        {
                            "host": pg,
                            "command": {
                                "run": "runuser -u postgres -- psql -h /run/postgresql -v ON_ERROR_STOP=1 -q -f -",
                                "stdin": "ALTER ROLE app PASSWORD '{value}';",
                            },
                            "verify": "read -r PGPASSWORD && export PGPASSWORD && "
                            f"psql 'host={pg_addr} user=app dbname=postgres' -tAc 'select 1' | grep -qx 1",
                        }
                    ],
                },
                "web/htpasswd": {
                    "file": "secrets/sources.yaml",
                    "generator": "derive",
                    "from": "web/password",
                    "params": {"function": "htpasswd", "user": "admin", "cost": 6},
                    "consumers": [
                        {
                            "host": web,
                            "file": {
                                "path": "/var/lib/web/htpasswd",
                                "mode": "0640",
                                "owner": "root",
                                "group": "www-data",
                            },
                            # The hash's consumer proves itself with the password it was made from.
                            "verify": {
                                "run": 'read -r pw && printf \'user = "admin:%s"\\n\' "$pw" | '
                                f"curl -fsS -o /dev/null -K - http://{web_addr}:{WEB_PORT}/",
                                "stdin": "{web/password}",
                            },
                        }
                    ],
                },
                "wg/snix": {
                    "file": "secrets/sources.yaml",
                    "generator": "wireguard",
                    "consumers": [
                        {"host": "snix", "file": {"path": "/var/lib/wireguard/private.key", "mode": "0600"}},
                        {
                            "host": peer,
                            "part": "public",
                            "file": {"path": "/var/lib/wireguard/peers/snix.pub", "mode": "0644"},
                            "verify": 'read -r k && [ "$(cat /var/lib/wireguard/peers/snix.pub)" = "$k" ]',
                        },
                    ],
                },
            }
        },
    )
    env = {**pass_env}
    plan = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--dry-run", env=env)
    assert plan.returncode in (0, 2), plan.stdout + plan.stderr
    assert "web/password + web/htpasswd" in plan.stdout
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--yes", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    first = values(lab)

    # pass: the value came from the store, and tokend accepts it.
    shown = subprocess.run(
        ["pass", "show", "tokend/token"],
        env={**os.environ, **pass_env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.splitlines()[0] == first["tokend/token"]
    assert tokend_accepts(lab, first["tokend/token"], host=tok)

    # password + htpasswd: PostgreSQL and nginx both take the password.
    assert first["web/htpasswd"].startswith("admin:$2b$06$")
    assert pg_login(lab, pg, first["web/password"])
    assert nginx_accepts(lab, web, "admin", first["web/password"])
    assert not nginx_accepts(lab, web, "admin", "wrong-" + first["web/password"])

    # WireGuard: the peer holds the public key of the private key snix got.
    from nacl.bindings import crypto_scalarmult_base

    private = lab.host("snix").path("/var/lib/wireguard/private.key").read_text().strip()
    peer_pub = lab.host(peer).path("/var/lib/wireguard/peers/snix.pub").read_text().strip()
    assert private == first["wg/snix"]
    assert peer_pub == base64.b64encode(crypto_scalarmult_base(base64.b64decode(private))).decode()

    # Rotating the password alone re-derives its hash in the same staged rotation.
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "web/password", "--yes", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "web/password + web/htpasswd" in r.stdout
    now = values(lab)
    assert now["web/password"] != first["web/password"] and now["web/htpasswd"] != first["web/htpasswd"]
    assert now["tokend/token"] == first["tokend/token"] and now["wg/snix"] == first["wg/snix"]
    assert pg_login(lab, pg, now["web/password"]) and nginx_accepts(lab, web, "admin", now["web/password"])
    assert not pg_login(lab, pg, first["web/password"])
    assert not nginx_accepts(lab, web, "admin", first["web/password"])

    # A failed verify on the hash's consumer rolls both back: old password works everywhere.
    lab.host(web).path("/var/lib/web/www/index.html").unlink()  # nginx now answers 404 to everyone
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "web/password", "--yes", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    lab.host(web).path("/var/lib/web/www/index.html").write_text("ok\n")
    after = values(lab)
    assert after["web/password"] == now["web/password"] and after["web/htpasswd"] == now["web/htpasswd"]
    assert pg_login(lab, pg, now["web/password"]) and nginx_accepts(lab, web, "admin", now["web/password"])


def status_rows(cli, lab) -> tuple[int, dict[str, dict]]:
    r = cli("-i", lab.inventory_path, "--json", "secrets", "status")
    return r.returncode, {row["name"]: row for row in json.loads(r.stdout)["secrets"]}


def test_prompted_value_is_set_delivered_and_then_needs_a_person(lab3, cli, tmp_path):
    lab = lab3
    notes = tmp_path / "notifications.txt"
    write_policy(
        lab,
        {
            "notify": {"command": f"cat >> {notes}"},
            "secrets": {
                "stripe/api-key": {
                    "file": "secrets/sources.yaml",
                    "generator": "prompt",
                    "max_age": "90d",
                    "consumers": [
                        {
                            "host": "brix",
                            "file": {"path": "/var/lib/app/stripe-key", "mode": "0600"},
                            "verify": 'read -r k && [ "$(cat /var/lib/app/stripe-key)" = "$k" ]',
                        }
                    ],
                },
            },
        },
    )
    # Never set: due, but only a person can act.
    code, rows = status_rows(cli, lab)
    assert code == 2 and rows["stripe/api-key"]["due"] and rows["stripe/api-key"]["needs_person"]
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "--due", "--yes")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "skipped stripe/api-key: due — needs a person" in r.stderr
    assert not lab.host("brix").path("/var/lib/app/stripe-key").exists()

    # Not from a terminal without --stdin, and never from argv.
    r = cli("-i", lab.inventory_path, "secrets", "set", "stripe/api-key")
    assert r.returncode == 3 and "--stdin" in r.stderr
    value = "sk_live_" + os.urandom(12).hex()
    r = cli("-i", lab.inventory_path, "secrets", "set", "stripe/api-key", "--stdin", input=value + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert value not in r.stdout + r.stderr
    assert lab.host("brix").path("/var/lib/app/stripe-key").read_text() == value
    assert values(lab)["stripe/api-key"] == value
    code, rows = status_rows(cli, lab)
    row = rows["stripe/api-key"]
    assert code == 0 and not row["due"] and row["generation"] == 1 and row["age_seconds"] < 120
    # --all rotates what a machine can; a prompted secret that is not due is left alone, quietly.
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--yes")
    assert r.returncode == 0 and "needs a person" not in r.stderr, r.stdout + r.stderr
    assert values(lab)["stripe/api-key"] == value

    # 100 days later: due, and it says who has to act.
    state_path = lab.flake_dir / "secrets" / ".rotation-state.yaml"
    st = yaml.safe_load(state_path.read_text())
    st["rotations"]["secret/stripe/api-key"]["last_rotated"] = "2020-01-01T00:00:00Z"
    state_path.write_text(yaml.safe_dump(st))
    r = cli("-i", lab.inventory_path, "secrets", "status", "--notify", env={"COLUMNS": "200"})
    assert r.returncode == 2 and "needs a person" in r.stdout
    assert "stripe/api-key (due — needs a person" in notes.read_text()
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "--due", "--yes")
    assert r.returncode == 2 and "skipped stripe/api-key: due — needs a person" in r.stderr
    assert lab.host("brix").path("/var/lib/app/stripe-key").read_text() == value  # untouched
    # Naming it is refused the same way; `secrets set` on a generated secret is bad input.
    r = cli("-i", lab.inventory_path, "secrets", "rotate", "stripe/api-key", "--yes")
    assert r.returncode == 2 and "secrets set stripe/api-key" in r.stderr

    # A `secrets set` killed after storing its value as pending: the next value a
    # person types wins over the pending one (not resumed), and is delivered.
    lost = "sk_live_" + os.urandom(12).hex()
    r = cli(
        "-i", lab.inventory_path, "secrets", "set", "stripe/api-key", "--stdin",
        input=lost + "\n", env={"INFRATOOL_FAULT": "stored"},
    )  # fmt: skip
    assert r.returncode == -9, r.stdout + r.stderr
    newer = "sk_live_" + os.urandom(12).hex()
    r = cli("-i", lab.inventory_path, "secrets", "set", "stripe/api-key", "--stdin", input=newer + "\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert lab.host("brix").path("/var/lib/app/stripe-key").read_text() == newer
    assert values(lab)["stripe/api-key"] == newer


def _live_leases(vault) -> set[str]:
    """The leases under database/creds/app that Vault still honours."""
    status, listing = vault.request("LIST", "/v1/sys/leases/lookup/database/creds/app/")
    assert status == 200
    leases = {f"database/creds/app/{k}" for k in listing["data"]["keys"]}
    return {lease for lease in leases if vault.lease_valid(lease)}


def test_vault_lease_delivered_verified_and_previous_revoked(lab3, cli, tmp_path):
    lab = lab3
    with vaultserver.serve(ttl=3600) as vault:
        login = f"{vault.addr}/db/login"
        write_policy(
            lab,
            {
                "secrets": {
                    "db/app": {
                        "file": "secrets/sources.yaml",
                        "generator": "vault",
                        "params": {"path": "database/creds/app", "template": "{username}:{password}"},
                        "max_age": "30d",
                        "consumers": [
                            {
                                "host": "brix",
                                "file": {"path": "/var/lib/app/db-cred", "mode": "0600"},
                                "verify": "test ! -e /var/lib/app/break && read -r c && "
                                f'printf \'user = "%s"\\n\' "$c" | curl -fsS -o /dev/null -K - {login}',
                            }
                        ],
                    }
                }
            },
        )
        env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token}
        r = cli("-i", lab.inventory_path, "-vv", "secrets", "rotate", "--all", "--yes", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        first = values(lab)
        lease1 = first["_rotation/lease/db/app"]
        assert vault.lease_valid(lease1)
        assert lab.host("brix").path("/var/lib/app/db-cred").read_text() == first["db/app"]
        _code, rows = status_rows(cli, lab)
        assert rows["db/app"]["max_age"] == "1h"  # the lease's TTL, shorter than the policy's 30d

        # A generic `plan` of a rotation playbook issues a lease while planning and, not
        # applied, returns it when the command ends; a plan saved with -o keeps its lease
        # until it is applied, and applying installs exactly that lease.
        book = tmp_path / "rotate-db.yaml"
        book.write_text(
            yaml.safe_dump(
                {
                    "name": "rotate-db",
                    "hosts": "all",
                    "tasks": [
                        {"task": "secrets_rotation.rotate", "with": {"names": ["db/app"], "force": True}}
                    ],
                }
            )
        )
        planned = cli("-i", lab.inventory_path, "plan", book, env=env)
        assert planned.returncode == 0 and "db/app" in planned.stdout, planned.stdout + planned.stderr
        assert _live_leases(vault) == {lease1}, "the lease issued while planning was not returned"
        saved = tmp_path / "rotate-db.plan.json"
        assert cli("-i", lab.inventory_path, "plan", book, "-o", saved, env=env).returncode == 0
        (kept,) = _live_leases(vault) - {lease1}
        applied = cli("-i", lab.inventory_path, "apply", saved, "--yes", env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert values(lab)["_rotation/lease/db/app"] == kept and _live_leases(vault) == {kept}
        lease1 = kept

        r = cli("-i", lab.inventory_path, "secrets", "rotate", "db/app", "--yes", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        second = values(lab)
        lease2 = second["_rotation/lease/db/app"]
        assert lease2 != lease1 and vault.lease_valid(lease2) and not vault.lease_valid(lease1)
        assert "_rotation/retire/db/app" not in second

        # A failed verify: rolled back to the current credential, whose lease stays valid;
        # the new lease is revoked (nothing uses it).
        lab.exec("brix", "touch /var/lib/app/break", check=True)
        r = cli("-i", lab.inventory_path, "secrets", "rotate", "db/app", "--yes", env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        third = values(lab)
        assert third["db/app"] == second["db/app"] and third["_rotation/lease/db/app"] == lease2
        assert vault.lease_valid(lease2)
        assert not any(k.startswith("_rotation/pending") for k in third)
        status, listing = vault.request("LIST", "/v1/sys/leases/lookup/database/creds/app/")
        assert status == 200
        live = [k for k in listing["data"]["keys"] if vault.lease_valid("database/creds/app/" + k)]
        assert live == [lease2.rsplit("/", 1)[1]], "the unused new lease was not revoked"
        assert lab.host("brix").path("/var/lib/app/db-cred").read_text() == second["db/app"]
