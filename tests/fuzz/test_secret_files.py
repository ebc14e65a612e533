"""Secrets with shell metacharacters arrive byte-exact, in files with the right mode and owner.

A real rotation (real sops, real lab hosts) of a password with symbols and an
OpenSSH key (multi-line, ``+/=``) whose comment is a shell payload, delivered
to file consumers (0400 nobody, default 0600 root, public part 0644) and to
command consumers whose stdin template is full of shell syntax: every file
holds exactly what sops holds (or the rendered template), with the mode and
owner asked for, no temp file is left, and no payload ever ran.
"""

from __future__ import annotations

import grp
import pwd
import secrets
import stat
from pathlib import Path

import pytest
import yaml
from infratool_lab import Lab

from infratool.errors import InputError
from infratool.rotation.policy import parse_policy
from infratool.secrets.store import SopsStore

MARK = f"pwned-{secrets.token_hex(4)}"
TEMPLATE = (
    f"ALTER ROLE app PASSWORD '{{value}}'; -- $(touch /tmp/{MARK}) `touch /tmp/{MARK}` \"; \\ $HOME ${{}}"
)

POLICY = {
    "secrets": {
        "app/password": {
            "file": "secrets/hostile.yaml",
            "generator": "password",
            "params": {"length": 40, "alphabet": "alnum+symbols"},
            "consumers": [
                {
                    "host": "brix",
                    "file": {
                        "path": "/var/lib/app/password",
                        "mode": "0400",
                        "owner": "nobody",
                        "group": "nogroup",
                    },
                },
                {
                    "host": "brix",
                    "command": "umask 077; cat > /var/lib/app/password.sql",
                    "stdin_template": TEMPLATE,
                },
            ],
        },
        "app/ssh": {
            "file": "secrets/hostile.yaml",
            "generator": "ssh-ed25519",
            "params": {"comment": f"x'$(touch /tmp/{MARK})'`id`"},
            "consumers": [
                {"host": "slax", "file": {"path": "/var/lib/app/id_ed25519"}},
                {
                    "host": "slax",
                    "part": "public",
                    "file": {"path": "/var/lib/app/id_ed25519.pub", "mode": "0644"},
                },
                {"host": "slax", "command": "umask 077; cat > /var/lib/app/id_ed25519.copy"},
            ],
        },
    }
}


def owner_of(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def line(value: str) -> bytes:
    """What a command consumer's stdin gets: the text, newline-terminated."""
    return value.encode() if value.endswith("\n") else value.encode() + b"\n"


def pwned(lab: Lab) -> list[str]:
    hits = [h.name for h in lab.hosts() if h.path(f"/tmp/{MARK}").exists()]
    return hits + (["controller"] if Path(f"/tmp/{MARK}").exists() else [])


def test_rotated_secrets_land_byte_exact_with_their_modes(fleet: Lab, cli) -> None:
    lab = fleet
    policy = lab.flake_dir / "secrets" / "rotation.yaml"
    policy.write_text(yaml.safe_dump(POLICY, allow_unicode=True))
    for rotation in (1, 2):  # a first delivery, then replacing existing files
        r = cli("-i", lab.inventory_path, "secrets", "rotate", "--all", "--yes")
        assert r.returncode == 0, f"rotation {rotation}: " + r.stdout + r.stderr
        values = {
            k: str(v.reveal()) for k, v in SopsStore(lab.flake_dir / "secrets").read("hostile.yaml").items()
        }
        password, key = values["app/password"], values["app/ssh"]
        assert len(password) == 40 and "\n" in key.strip()
        brix, slax = lab.host("brix"), lab.host("slax")

        assert brix.path("/var/lib/app/password").read_bytes() == password.encode()
        assert owner_of(brix.path("/var/lib/app/password")) == ("nobody", "nogroup", 0o400)
        sql = brix.path("/var/lib/app/password.sql")
        assert sql.read_bytes() == line(TEMPLATE.replace("{value}", password))
        assert owner_of(sql) == ("root", "root", 0o600)

        assert slax.path("/var/lib/app/id_ed25519").read_bytes() == key.encode()
        assert owner_of(slax.path("/var/lib/app/id_ed25519")) == ("root", "root", 0o600)  # the policy default
        public = slax.path("/var/lib/app/id_ed25519.pub").read_text()
        assert public.startswith("ssh-ed25519 AAAA") and public.rstrip("\n").endswith(
            f"x'$(touch /tmp/{MARK})'`id`"
        )
        assert owner_of(slax.path("/var/lib/app/id_ed25519.pub"))[2] == 0o644
        assert slax.path("/var/lib/app/id_ed25519.copy").read_bytes() == line(key)

        for host in (brix, slax):
            leftovers = [p.name for p in host.path("/var/lib/app").iterdir() if p.name.startswith(".")]
            assert leftovers == [], f"temp files left on {host.name}: {leftovers}"
        assert pwned(lab) == []


def test_files_content_secret_modes_and_owners(lab: Lab, cli, tmp_path) -> None:
    value = f"s3cr3t '$(touch /tmp/{MARK})' `id` \"\\\n"
    pb = tmp_path / "pb.yaml"
    pb.write_text(
        yaml.safe_dump(
            {
                "hosts": "snix",
                "tasks": [
                    {
                        "task": "files.content",
                        "with": {"path": "/var/lib/app/default", "content": value, "secret": True},
                    },
                    {
                        "task": "files.content",
                        "with": {
                            "path": "/var/lib/app/owned",
                            "content": value,
                            "secret": True,
                            "mode": "0400",
                            "owner": "nobody",
                            "group": "nogroup",
                        },
                    },
                ],
            }
        )
    )
    r = cli("-i", lab.inventory_path, "run", pb, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    snix = lab.host("snix")
    assert snix.path("/var/lib/app/default").read_bytes() == value.encode()
    assert owner_of(snix.path("/var/lib/app/default")) == ("root", "root", 0o600)
    assert snix.path("/var/lib/app/owned").read_bytes() == value.encode()
    assert owner_of(snix.path("/var/lib/app/owned")) == ("nobody", "nogroup", 0o400)
    assert sorted(p.name for p in snix.path("/var/lib/app").iterdir()) == ["default", "owned"]
    assert pwned(lab) == []


@pytest.mark.parametrize(
    "path", ["/var/lib/app/../../etc/shadow", "/var/lib/app/a\nb", "relative/path", "/var/lib/\x7fx"]
)
def test_policy_refuses_hostile_consumer_paths(tmp_path: Path, path: str) -> None:
    data = {
        "secrets": {
            "a/b": {
                "file": "secrets/x.yaml",
                "generator": "hex",
                "consumers": [{"host": "brix", "file": {"path": path}}],
            }
        }
    }
    with pytest.raises(InputError) as err:
        parse_policy(data, tmp_path / "rotation.yaml", {"brix"}, tmp_path)
    assert "file.path" in err.value.message
