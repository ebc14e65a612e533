"""What the command line shows against the lab (issue 17): verbosity levels with
secrets masked, logs as JSON when piped and in --log-file, whole fingerprints in
`hosts --check`, and `lab up --subnet` with its export lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from infratool.remote import fingerprint

CANARY = "CANARY-cli-" + os.urandom(10).hex()
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _book(tmp_path: Path) -> Path:
    book = tmp_path / "verbose.yaml"
    book.write_text(
        yaml.safe_dump(
            {
                "hosts": "snix",
                "tasks": [
                    {
                        "task": "files.content",
                        "with": {"path": "/var/lib/app/canary-v", "content": CANARY, "secret": True},
                    },
                    # Prints the secret (masked) and something computed on the host.
                    {
                        "task": "command",
                        "with": {"command": "cat /var/lib/app/canary-v; echo shown-$((6*7))"},
                    },
                ],
            }
        )
    )
    return book


def _events(stderr: str) -> list[dict]:
    """The JSON log events of a piped stderr (every non-empty line must be one)."""
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def test_verbosity_levels_show_more_and_never_the_secret(lab, cli, tmp_path):
    inv, book = lab.inventory_path, _book(tmp_path)
    levels = {}
    for flags in ([], ["-v"], ["-vv"], ["-vvv"]):
        # Flags after the subcommand, as users type them.
        proc = cli("run", book, "--yes", "-i", inv, "--log-format", "json", *flags)
        assert proc.returncode == 0, proc.stderr
        assert CANARY not in proc.stdout + proc.stderr
        levels[len(flags[0]) - 1 if flags else 0] = _events(proc.stderr)

    def named(level: int, event: str) -> list[dict]:
        return [e for e in levels[level] if e.get("event") == event]

    assert not named(0, "command output") and not named(0, "remote command")
    # -v: a command task's output, masked.
    [shown] = named(1, "command output")
    assert "shown-42" in shown["stdout"] and "***" in shown["stdout"]
    assert not named(1, "remote command")
    # -vv: every remote command, without its output.
    commands = named(2, "remote command")
    assert any("cat /var/lib/app/canary-v" in e["command"] for e in commands)
    assert all("stdout" not in e and e["host"] == "snix" for e in commands)
    # -vvv: with its output, masked.
    outputs = [e for e in named(3, "remote command") if "cat /var/lib/app/canary-v" in e["command"]]
    assert outputs and "shown-42" in outputs[-1]["stdout"] and "***" in outputs[-1]["stdout"]


def test_verify_steps_show_at_v(fleet, cli):
    from helpers import PLAYBOOKS

    book = PLAYBOOKS / "binary-cache.yaml"
    proc = cli(
        "-i", fleet.inventory_path, "run", book, "--yes", "-v", "--json", "--log-format", "json", timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stderr)
    steps = [e for e in events if e.get("event") == "verify"]
    proved = [e for e in events if e.get("event") == "verified"]
    assert steps and proved, [e.get("event") for e in events]
    assert {e["task"] for e in proved} <= {e["task"] for e in steps}
    # The result says what was proven where: a real signed fetch on each linux client.
    results = {r["host"]: r for r in json.loads(proc.stdout)["results"]}
    # (Each client's probe is a check now: "substituted /nix/store/…-probe from URL".)
    clients = [
        h
        for h, r in results.items()
        if any(re.match(r"substituted /nix/store/\S+ from http://", v) for v in r["verified"])
    ]
    assert clients, results
    assert all(results[h]["status"] in ("ok", "changed") for h in clients)


def test_log_format_and_log_file(lab, cli, tmp_path):
    inv, book = lab.inventory_path, _book(tmp_path)
    text = cli("-i", inv, "-v", "run", book, "--yes")  # piped, yet text by default
    assert text.returncode == 0, text.stderr
    assert "command output" in text.stderr
    assert not any(line.startswith("{") for line in text.stderr.splitlines())
    as_json = cli("-i", inv, "--log-format", "json", "-v", "run", book, "--yes")
    events = _events(as_json.stderr)  # every line, progress included, is JSON
    assert {"progress", "command output"} <= {e["event"] for e in events}
    log_file = tmp_path / "infratool.log"
    quiet = cli("-i", inv, "run", book, "--yes", "--log-file", log_file, "-q")  # -q: stderr stays quiet
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert log_file.stat().st_mode & 0o777 == 0o600
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(e["event"] == "command output" and "shown-42" in e["stdout"] for e in events)
    assert CANARY not in log_file.read_text()


def test_hosts_check_shows_whole_fingerprints_and_exits_4(lab, cli):
    inv = lab.inventory_path
    pinned = lab.host("brix").host_key_public
    offered = lab.regenerate_host_key("brix")
    want = [fingerprint(pinned), fingerprint(offered)]
    for env in ({}, {"COLUMNS": "60", "FORCE_COLOR": "1"}, {"COLUMNS": "80", "FORCE_COLOR": "1"}):
        proc = cli("-i", inv, "hosts", "--check", env=env)
        assert proc.returncode == 4, (proc.stdout, proc.stderr)
        out = ANSI.sub("", proc.stdout)
        assert "…" not in out
        for fp in want:
            assert fp in out, (fp, out)
        assert all(name in out for name in ("snix", "slax", "brix", "nixtv-player"))
    doc = json.loads(cli("-i", inv, "hosts", "--check", "--json").stdout)
    rows = {r["name"]: r for r in doc["hosts"]}
    assert rows["snix"]["reachable"] is True and rows["snix"]["error"] is None
    assert rows["brix"]["reachable"] is False and all(fp in rows["brix"]["error"] for fp in want)


def test_lab_up_subnet_prints_exports_that_work(cli, tmp_path, lab_subnet):
    env = {"INFRATOOL_LAB_DIR": str(tmp_path / "lab2")}
    up = cli("lab", "up", "--hosts", "1", "--subnet", lab_subnet, env=env, timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        exports = [line for line in up.stdout.splitlines() if line.startswith("export ")]
        assert [e.split("=")[0] for e in exports] == [
            "export INFRATOOL_INVENTORY",
            "export SOPS_AGE_KEY_FILE",
        ]
        inventory = yaml.safe_load(Path(exports[0].split("=", 1)[1]).read_text())
        assert inventory["hosts"]["snix"]["address"] == f"{lab_subnet}.10"
        # The next command "just works" after eval'ing the lines, as a reader would.
        script = "\n".join(exports) + f'\n"{sys.executable}" -m infratool hosts --check\n'
        clean = {k: v for k, v in os.environ.items() if k not in ("INFRATOOL_INVENTORY", "SOPS_AGE_KEY_FILE")}
        check = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=clean, cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "reachable=yes" in check.stdout
    finally:
        assert cli("lab", "down", env=env).returncode == 0


def test_secureboot_status_never_cuts_a_verdict(lab, cli):
    """The lab hosts have no sbctl: 'sbctl-missing' was printed 'sbctl-mis…' at 80 columns."""
    inv = lab.inventory_path
    for env in ({}, {"COLUMNS": "60", "FORCE_COLOR": "1"}, {"COLUMNS": "80", "FORCE_COLOR": "1"}):
        proc = cli("-i", inv, "secureboot", "status", env=env)
        out = ANSI.sub("", proc.stdout)
        assert "…" not in out, out
        verdicts = {
            name: next(
                line for line in out.splitlines() if line.startswith(name + " ") or f" {name} " in line
            )
            for name in ("snix", "slax", "brix", "nixtv-player")
        }
        assert all("sbctl-missing" in line for line in verdicts.values()), out


def test_exec_runs_ad_hoc_commands_per_host(lab, cli):
    inv = lab.inventory_path
    ok = cli("-i", inv, "exec", "--json", "--", "echo hello-$((6*7))")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["version"] == 1 and doc["command"] == "exec"
    assert {h["host"]: (h["exit"], h["stdout"]) for h in doc["hosts"]} == {
        name: (0, "hello-42\n") for name in ("snix", "slax", "brix", "nixtv-player")
    }
    # Several words are quoted exactly as given; an exit code is reported per host.
    failing = cli(
        "-i", inv, "exec", "--limit", "snix,slax", "--json", "--", "sh", "-c", "echo oops >&2; exit 3"
    )
    assert failing.returncode == 1
    assert [(h["exit"], h["stderr"]) for h in json.loads(failing.stdout)["hosts"]] == [(3, "oops\n")] * 2
    # A host down fails alone; a changed host key is refused (exit 4), the others still run.
    lab.stop_host("slax")
    lab.regenerate_host_key("brix")
    mixed = cli("-i", inv, "exec", "--", "true")
    assert mixed.returncode == 4, mixed.stdout + mixed.stderr
    lines = {line.split(":")[0]: line for line in mixed.stdout.splitlines() if ":" in line}
    assert "exit 0" in lines["snix"] and "exit 0" in lines["nixtv-player"]
    assert "not run" in lines["slax"] and "not run" in lines["brix"]
    assert "exit 0 on 2 of 4 host(s)" in mixed.stdout
