"""The canary sweep: every path that touches a secret, at once, with zero leaks allowed.

One lab runs the whole scenario below while strace records every exec on
both ends (tests/exectrace.py: the CLI and its children, every lab sshd and
everything its sessions run). Afterwards every secret value the run created
or handled is searched for in: argv and environment of every exec, stdout and
stderr of every command (plans, diffs, JSON, errors), the audit log, the
controller's temp dir, every host's /tmp, every sshd log, and the repo outside
the encrypted files.

"Every value created or handled" is collected three ways, so a value that
lived only between two steps is not missed: every value any CLI process
wrapped in ``Secret`` (generated or read; recorded by the test-only
tests/recorder/sitecustomize.py), every value of every sops file after every
step (builder keys that a later rotation overwrites, the cache key a later
rotation retires), and the mnemonic, the inline canary and the Secure Boot
private keys.

Adding a secret path: append a step to ``SCENARIO`` (a CLI invocation, or a
callable for set-up). Its outputs are swept like the others; values it stores
in sops are picked up automatically.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml
from exectrace import both_ends
from helpers import PLAYBOOKS, ROOT, files_containing
from infratool_lab.services import prepare_fleet

from infratool.onboard.scaffold import sops_files
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
    # rotate_keys rotates keys older than max_age: these were made by an earlier step.
    data["tasks"][0]["with"].update(rotate_keys=True, max_age="1s")


def _rotate_cache_key(data: dict) -> None:
    for task in data["tasks"]:
        if task["task"] == "binary_cache.rotate_key":
            task["with"]["generation"] = 2


def scenario(lab, tmp: Path) -> list[tuple[str, list[str] | Callable[[], None], str | None]]:
    """(label, CLI args or a callable, stdin) — in order."""
    inv = str(lab.inventory_path)

    def wipe_slax_keys() -> None:
        shutil.rmtree(lab.host("slax").path("/var/lib/sbctl/keys"))

    def under_git() -> None:
        # From here `secrets rotate` commits (rotation/git.py): its messages and history are swept.
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "fleet"]):
            _git(lab.flake_dir, *args)

    return [
        ("site plan", ["-i", inv, "--json", "plan", str(PLAYBOOKS / "site.yaml")], None),
        ("site run", ["-i", inv, "-vv", "run", str(PLAYBOOKS / "site.yaml"), "--yes"], None),
        # -vvv: every remote command and its output (masked) go to stderr, which is swept.
        # A saved plan of a secret file: the canary is sealed in the plan file, never in clear.
        (
            "secret file plan -o",
            ["-i", inv, "plan", str(_canary_playbook(tmp)), "-o", str(tmp / "canary.plan.json")],
            None,
        ),
        ("secret file apply", ["-i", inv, "-vvv", "apply", str(tmp / "canary.plan.json"), "--yes"], None),
        ("secret file", ["-i", inv, "-vvv", "run", str(_canary_playbook(tmp)), "--yes"], None),
        ("rotate all (dry run)", ["-i", inv, "secrets", "rotate", "--all", "--dry-run"], None),
        ("fleet repo under git", under_git, None),
        ("rotate all", ["-i", inv, "-vvv", "secrets", "rotate", "--all", "--yes"], None),
        ("drift check", ["-i", inv, "-vvv", "secrets", "check"], None),
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
        ("recover init", ["-i", inv, "secrets", "recover", "init", "--to-stdout"], None),
        ("secrets status", ["-i", inv, "--json", "secrets", "status"], None),
        (
            "site plan after",
            ["-i", inv, "--json", "plan", str(PLAYBOOKS / "site.yaml"), "--detailed-exitcode"],
            None,
        ),
    ]


def _git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=Sweep", "-c", "user.email=sweep@example.org"]
    proc = subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return proc.stdout


def _forms(text: str) -> set[str]:
    """``text`` and, for a base64-stored file (Secure Boot keys), its decoded lines."""
    found = {text}
    try:
        decoded = base64.b64decode(text, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return found
    return found | {line for line in decoded.splitlines() if len(line) >= 40 and "-----" not in line}


def sops_values(lab) -> set[str]:
    """Every secret value in every sops file now, in the forms it could leak in."""
    store = SopsStore(lab.flake_dir / "secrets")
    found: set[str] = set()
    for path in sops_files(lab.flake_dir / "secrets"):
        for key, value in store.read(path).items():
            text = str(value.reveal())
            if key.endswith(("sha256", "/mode", "/owner", "/group", "/size")) or len(text) < MIN_LEN:
                continue
            found |= _forms(text)
    return found


def recorded_values(record: Path) -> set[str]:
    """Every value the CLI processes wrapped in ``Secret`` (tests/recorder/sitecustomize.py)."""
    found: set[str] = set()
    for line in record.read_text().split():
        text = bytes.fromhex(line).decode(errors="replace")
        for part in (text, *text.splitlines()):
            part = part.strip()
            if len(part) >= MIN_LEN and "-----" not in part:
                found |= _forms(part)
    return found


def test_no_secret_appears_anywhere(lab, cli, tmp_path, _private_audit_log, monkeypatch):
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(prepare_fleet(lab)))
    record = tmp_path / "recorded-secrets.hex"
    recording = {"PYTHONPATH": str(ROOT / "tests" / "recorder"), "INFRATOOL_TEST_SECRET_RECORD": str(record)}
    outputs: dict[str, str] = {}
    words = ""
    snapshots: dict[str, set[str]] = {}
    with both_ends(lab, cli, tmp_path / "execs") as seen:
        for label, step, stdin in scenario(lab, tmp_path):
            if callable(step):
                step()
                continue
            result = seen.cli(*step, input=stdin, env=recording)
            outputs[label] = result.stdout + "\n" + result.stderr
            if label == "site plan after":
                assert result.returncode == 0, f"{label}: not converged\n{outputs[label][-3000:]}"
            elif label != "secrets status":
                assert result.returncode == 0, f"{label} failed:\n{outputs[label][-3000:]}"
            if label == "recover init":
                words = result.stdout.strip()
                outputs[label] = result.stderr  # the words go to the terminal once, by design
            snapshots[label] = sops_values(lab)
        check = seen.cli(
            "-i", lab.inventory_path, "secrets", "recover", "check", input=words + "\n", env=recording
        )
        assert check.returncode == 0, check.stdout + check.stderr
        outputs["recover check"] = check.stdout + check.stderr
    seen.assert_recorded(min_sessions=4 * len(lab.hosts()))

    keys = lab.host("slax").path("/var/lib/sbctl/keys")
    on_host = {line for k in keys.rglob("*.key") for line in k.read_text().splitlines()}
    secrets = (
        {CANARY, words}
        | set().union(*snapshots.values())
        | recorded_values(record)
        | {line for line in on_host if len(line) >= 40 and "-----" not in line}
    )
    final = snapshots["site plan after"]
    # The sweep covers what the run overwrote or retired, not only what is left at the end:
    # the builder keys before their rotation and the cache key before its rotation.
    overwritten = snapshots["site run"] - final
    assert len(overwritten) >= 4, "the builder and cache key rotations replaced nothing?"
    assert overwritten <= secrets
    assert snapshots["rotate all"] - snapshots["rotate all (dry run)"], "rotate all rotated nothing"
    assert recorded_values(record) - final, "the recorder saw no value that is gone by the end"
    assert len(secrets) >= 20, "the sweep found too few secrets to be meaningful"

    places = {f"output of {label}": text for label, text in outputs.items()}
    places["audit log"] = _private_audit_log.read_text()
    places["plan file"] = (tmp_path / "canary.plan.json").read_text()
    assert "ENC[AES256_GCM" in places["plan file"], "the plan file sealed nothing"
    for h in lab.hosts():
        places[f"sshd log of {h.name}"] = h.sshd_log.read_text()
    places["rotation state"] = (lab.flake_dir / "secrets" / ".rotation-state.yaml").read_text()
    places["git history"] = _git(lab.flake_dir, "log", "-p", "--all")
    assert "secrets: rotate" in places["git history"], "the rotation was not committed"

    hits = []
    encrypted = set(sops_files(lab.flake_dir / "secrets"))
    for value in secrets:
        shown = value[:12] + "…"
        hits += [f"{shown} in {where}" for where, text in places.items() if value in text]
        hits += [f"{shown} in {where}" for where in seen.hits(value)]
        hits += [f"{shown} in {p}" for p in files_containing(tmp_path / "controller-tmp", value)]
        for h in lab.hosts():
            hits += [f"{shown} in {p}" for p in files_containing(h.path("/tmp"), value)]
        # The repo holds secrets only inside sops files.
        hits += [
            f"{shown} in repo file {p}" for p in files_containing(lab.flake_dir, value) if p not in encrypted
        ]
    assert hits == []
