"""The canary sweep: every path that touches a secret, at once, with zero leaks allowed.

One lab runs the whole scenario below while a sampler records every process
command line on the machine (lab hosts share the controller's pid namespace,
so this sees both ends of every SSH session). Afterwards every secret value
the run created or handled — everything in every sops file, the mnemonic, the
inline canary, the Secure Boot private keys — is searched for in: argv
samples, stdout and stderr of every command (plans, diffs, JSON, errors), the
audit log, the controller's temp dir, every host's /tmp, every sshd log, and
the repo outside the encrypted files.

Adding a secret path: append a step to ``SCENARIO`` (a CLI invocation, or a
callable for set-up). Its outputs are swept like the others; values it stores
in sops are picked up automatically.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml
from helpers import PLAYBOOKS, files_containing, sample_ps

from infratool.lab.services import prepare_fleet
from infratool.scaffold import sops_files
from infratool.secrets.store import SopsStore

CANARY = "CANARY-sweep-" + os.urandom(12).hex()
MIN_LEN = 16  # shorter values (ports, flags, generation numbers) are not secrets


def _canary_playbook(tmp: Path) -> Path:
    p = tmp / "canary-file.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "tasks": [
                    {
                        "task": "files.content",
                        "with": {
                            "path": "/var/lib/app/canary",
                            "content": CANARY,
                            "secret": True,
                            "mode": "0600",
                        },
                    }
                ]
            }
        )
    )
    return p


def _variant(tmp: Path, name: str, edit: Callable[[dict], None]) -> Path:
    data = yaml.safe_load((PLAYBOOKS / name).read_text())
    edit(data)
    out = tmp / name
    out.write_text(yaml.safe_dump(data))
    return out


def _rotate_builder_keys(data: dict) -> None:
    data["tasks"][0]["with"]["rotate_keys"] = True


def _rotate_cache_key(data: dict) -> None:
    for task in data["tasks"]:
        if task["task"] == "binary_cache.rotate_key":
            task["with"]["generation"] = 2


def scenario(lab, tmp: Path) -> list[tuple[str, list[str] | Callable[[], None], str | None]]:
    """(label, CLI args or a callable, stdin) — in order."""
    inv = str(lab.inventory_path)

    def wipe_slax_keys() -> None:
        shutil.rmtree(lab.host("slax").path("/var/lib/sbctl/keys"))

    return [
        ("site plan", ["-i", inv, "--json", "plan", str(PLAYBOOKS / "site.yaml")], None),
        ("site run", ["-i", inv, "-vv", "run", str(PLAYBOOKS / "site.yaml"), "--yes"], None),
        # -vvv: every remote command and its output (masked) go to stderr, which is swept.
        ("secret file", ["-i", inv, "-vvv", "run", str(_canary_playbook(tmp)), "--yes"], None),
        ("rotate all (dry run)", ["-i", inv, "secrets", "rotate", "--all", "--dry-run"], None),
        ("rotate all", ["-i", inv, "-vvv", "secrets", "rotate", "--all", "--yes"], None),
        (
            "builder key rotation",
            [
                "-i",
                inv,
                "-vv",
                "run",
                str(_variant(tmp, "remote-builders.yaml", _rotate_builder_keys)),
                "--yes",
            ],
            None,
        ),
        (
            "cache key rotation",
            ["-i", inv, "-vv", "run", str(_variant(tmp, "binary-cache.yaml", _rotate_cache_key)), "--yes"],
            None,
        ),
        ("wipe slax's Secure Boot keys", wipe_slax_keys, None),
        ("secure boot restore", ["-i", inv, "-vv", "secureboot", "restore", "slax", "--yes"], None),
        ("secure boot status", ["-i", inv, "--json", "secureboot", "status"], None),
        ("recover init", ["-i", inv, "secrets", "recover", "init"], None),
        ("secrets status", ["-i", inv, "--json", "secrets", "status"], None),
        (
            "site plan after",
            ["-i", inv, "--json", "plan", str(PLAYBOOKS / "site.yaml"), "--detailed-exitcode"],
            None,
        ),
    ]


def secret_values(lab, words: str) -> set[str]:
    """Every secret the run handled, in the forms it could leak in."""
    store = SopsStore(lab.flake_dir / "secrets")
    found = {CANARY, words}
    for path in sops_files(lab.flake_dir / "secrets"):
        for key, value in store.read(path).items():
            text = str(value.reveal())
            if key.endswith(("sha256", "/mode", "/owner", "/group", "/size")) or len(text) < MIN_LEN:
                continue
            found.add(text)
            # Base64-stored files (Secure Boot keys): their lines as they would appear decoded.
            try:
                decoded = base64.b64decode(text, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                continue
            found.update(line for line in decoded.splitlines() if len(line) >= 40 and "-----" not in line)
    for key in lab.host("slax").path("/var/lib/sbctl/keys").rglob("*.key"):
        found.update(line for line in key.read_text().splitlines() if len(line) >= 40 and "-----" not in line)
    return found


def test_no_secret_appears_anywhere(lab, cli, tmp_path, _private_audit_log, monkeypatch):
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(prepare_fleet(lab)))
    outputs: dict[str, str] = {}
    words = ""
    with sample_ps() as seen:
        for label, step, stdin in scenario(lab, tmp_path):
            if callable(step):
                step()
                continue
            result = cli(*step, input=stdin)
            outputs[label] = result.stdout + "\n" + result.stderr
            if label == "site plan after":
                assert result.returncode == 0, f"{label}: not converged\n{outputs[label][-3000:]}"
            elif label != "secrets status":
                assert result.returncode == 0, f"{label} failed:\n{outputs[label][-3000:]}"
            if label == "recover init":
                words = result.stdout.strip()
                outputs[label] = result.stderr  # the words go to the terminal once, by design
        check = cli("-i", lab.inventory_path, "secrets", "recover", "check", input=words + "\n")
        assert check.returncode == 0, check.stdout + check.stderr
        outputs["recover check"] = check.stdout + check.stderr

    secrets = secret_values(lab, words)
    assert len(secrets) >= 10, "the sweep found too few secrets to be meaningful"
    places = {f"output of {label}": text for label, text in outputs.items()}
    places["audit log"] = _private_audit_log.read_text()
    for h in lab.hosts():
        places[f"sshd log of {h.name}"] = h.sshd_log.read_text()
    places["rotation state"] = (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_text()
    argv = "\n".join(set(seen))

    hits = []
    for value in secrets:
        shown = value[:12] + "…"
        hits += [f"{shown} in {where}" for where, text in places.items() if value in text]
        if value in argv:
            hits.append(f"{shown} in a process argv")
        hits += [f"{shown} in {p}" for p in files_containing(tmp_path / "controller-tmp", value)]
        for h in lab.hosts():
            hits += [f"{shown} in {p}" for p in files_containing(h.path("/tmp"), value)]
        # The repo holds secrets only inside sops files.
        encrypted = set(sops_files(lab.flake_dir / "secrets"))
        hits += [
            f"{shown} in repo file {p}" for p in files_containing(lab.flake_dir, value) if p not in encrypted
        ]
    assert hits == []
