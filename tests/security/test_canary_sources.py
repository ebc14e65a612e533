"""The canary sweep for secret sources (issue 18): command, derive, wireguard, prompt, vault.

One lab rotates a policy with every new generator while a sampler records
every process command line. Then every secret value the run handled — all
sops values (hashes, keys, Vault credentials and lease ids), the prompted
value, the Vault token, and canaries a generator command printed on stdout
and stderr before failing — is searched for in: argv samples, stdout and
stderr of every command (run with ``-vv``, so HTTP client debug logs are
included), the audit log, the rotation state, sshd logs, the controller's
temp dir, every host's /tmp, and the repo outside the sops files.
"""

from __future__ import annotations

import os

import vaultserver
import yaml
from helpers import files_containing, sample_ps

from infratool.onboard.scaffold import ensure_operator_repo, sops_files
from infratool.secrets.store import SopsStore

MIN_LEN = 16


def test_no_source_secret_appears_anywhere(lab_factory, cli, tmp_path, _private_audit_log, monkeypatch):
    lab = lab_factory(3)
    key = lab.root / "age.key"
    ensure_operator_repo(lab.flake_dir, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    stdout_canary = "CANARY-stdout-" + os.urandom(10).hex()
    stderr_canary = "CANARY-stderr-" + os.urandom(10).hex()
    quiet_canary = "CANARY-quiet-stderr-" + os.urandom(10).hex()
    prompted = "CANARY-prompted-" + os.urandom(10).hex()
    inv = str(lab.inventory_path)
    # The commands read their canaries from files: written into the policy they
    # would sit in the repo and in argv by design.
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    for name, value in (("out", stdout_canary), ("err", stderr_canary), ("quiet", quiet_canary)):
        (canaries / name).write_text(value + "\n")

    with vaultserver.serve() as vault, sample_ps() as seen:
        file_on = lambda host, path: {"host": host, "file": {"path": path, "mode": "0600"}}  # noqa: E731
        policy = {
            "secrets": {
                "cmd/token": {
                    "file": "secrets/sources.yaml",
                    "generator": "command",
                    # Success, but chatty on stderr: the chatter is not shown either.
                    "params": {
                        "run": f"cat {canaries}/quiet >&2; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
                    },
                    "consumers": [file_on("brix", "/var/lib/app/token")],
                },
                "cmd/broken": {
                    "file": "secrets/broken.yaml",
                    "generator": "command",
                    "params": {"run": f"cat {canaries}/out; cat {canaries}/err >&2; exit 3"},
                    "consumers": [file_on("brix", "/var/lib/app/broken")],
                },
                "web/password": {
                    "file": "secrets/sources.yaml",
                    "generator": "password",
                    "consumers": [file_on("slax", "/var/lib/app/web-password")],
                },
                "web/htpasswd": {
                    "file": "secrets/sources.yaml",
                    "generator": "derive",
                    "from": "web/password",
                    "params": {"function": "htpasswd", "user": "admin", "cost": 5},
                    "consumers": [
                        {
                            **file_on("slax", "/var/lib/app/htpasswd"),
                            "verify": {"run": 'read -r pw && test -n "$pw"', "stdin": "{web/password}"},
                        }
                    ],
                },
                "web/url": {
                    "file": "secrets/sources.yaml",
                    "generator": "derive",
                    "from": "web/password",
                    "params": {"function": "template", "template": "https://admin:{value}@web.example/"},
                    "consumers": [file_on("slax", "/var/lib/app/url")],
                },
                "wg/key": {
                    "file": "secrets/sources.yaml",
                    "generator": "wireguard",
                    "consumers": [file_on("snix", "/var/lib/wireguard/key")],
                },
                "api/key": {
                    "file": "secrets/sources.yaml",
                    "generator": "prompt",
                    "consumers": [file_on("brix", "/var/lib/app/api-key")],
                },
                "db/app": {
                    "file": "secrets/sources.yaml",
                    "generator": "vault",
                    "params": {"path": "database/creds/app", "template": "{username}:{password}"},
                    "consumers": [file_on("brix", "/var/lib/app/db-cred")],
                },
            }
        }
        (lab.flake_dir / "secrets" / "rotation.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token}
        steps = [
            # New values are made at plan time (issue 16), so cmd/broken's generator fails the
            # dry run already: exit 1, with its output withheld like the real run's.
            ("plan", ["-i", inv, "-vv", "secrets", "rotate", "--all", "--dry-run"], None, (1,)),
            ("rotate all", ["-i", inv, "-vv", "secrets", "rotate", "--all", "--yes"], None, (1,)),
            ("set", ["-i", inv, "-vv", "secrets", "set", "api/key", "--stdin"], prompted + "\n", (0,)),
            (
                "rotate again",
                ["-i", inv, "-vv", "--json", "secrets", "rotate", "db/app", "web/password", "--yes"],
                None,
                (0,),
            ),
            ("status", ["-i", inv, "--json", "secrets", "status"], None, (0, 2)),
        ]
        outputs = {}
        for label, args, stdin, codes in steps:
            r = cli(*args, input=stdin, env=env)
            outputs[label] = r.stdout + "\n" + r.stderr
            assert r.returncode in codes, f"{label}: exit {r.returncode}\n{outputs[label][-3000:]}"
        assert "cmd/broken" in outputs["rotate all"] and "withheld" in outputs["rotate all"]
        assert "cmd/broken" in outputs["plan"] and "withheld" in outputs["plan"]

    store = SopsStore(lab.flake_dir / "secrets")
    found = {stdout_canary, stderr_canary, quiet_canary, prompted, vault.token}
    for path in sops_files(lab.flake_dir / "secrets"):
        for value in store.read(path).values():
            text = str(value.reveal())
            if len(text) >= MIN_LEN:
                found.add(text)
                found.update(part for part in text.split(":") if len(part) >= MIN_LEN)  # user:hash, user:pass
    assert prompted in {str(v.reveal()) for v in store.read("sources.yaml").values()}
    assert len(found) >= 12, "the sweep found too few secrets to be meaningful"

    places = {f"output of {label}": text for label, text in outputs.items()}
    places["audit log"] = _private_audit_log.read_text()
    places["rotation state"] = (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_text()
    for h in lab.hosts():
        places[f"sshd log of {h.name}"] = h.sshd_log.read_text()
    argv = "\n".join(set(seen))
    encrypted = set(sops_files(lab.flake_dir / "secrets"))
    hits = []
    for value in found:
        shown = value[:14] + "…"
        hits += [f"{shown} in {where}" for where, text in places.items() if value in text]
        if value in argv:
            hits.append(f"{shown} in a process argv")
        hits += [f"{shown} in {p}" for p in files_containing(tmp_path / "controller-tmp", value)]
        for h in lab.hosts():
            hits += [f"{shown} in {p}" for p in files_containing(h.path("/tmp"), value)]
        hits += [
            f"{shown} in repo file {p}" for p in files_containing(lab.flake_dir, value) if p not in encrypted
        ]
    assert hits == []
