"""The rotation timer under a real systemd 252 running as PID 1 (issue 23).

The container (tests/realsystemd.py) has infratool installed in /opt/infratool
as an operator would; the lab hosts run on loopback as everywhere else. The
units are the ones ``infratool timer install`` writes inside the container
(and, in one test, the ones the NixOS module's ``nix/units.nix`` evaluates to).

What runs for real here: the timer firing on its own, the hardened service
rotating a secret over SSH with sops, the consumer checking it, a second
firing with nothing due, a failing verify (exit 1, ``is-failed``, the
notification POSTed to a server on loopback), the age identity arriving only
through ``LoadCredential=``, and ``systemd-analyze security`` on the loaded
unit. Not covered: git (rotations are not committed by infratool yet).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import random
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import realsystemd
import yaml
from helpers import nix_eval
from infratool_lab import AddressInUseError, Lab, LabUnavailable, services

from infratool.onboard.scaffold import ensure_operator_repo
from infratool.rotation.timer import CREDENTIAL, SERVICE, TIMER
from infratool.secrets.store import SopsStore

INFRATOOL = f"{realsystemd.VENV}/bin/infratool"
CREDENTIALS = f"/run/credentials/{SERVICE}"
_labs = itertools.count()


def _unavailable(reason: str) -> None:
    # In CI a missing container is a failure, never a silent skip.
    if os.environ.get("CI"):
        pytest.fail(f"a real systemd is needed here and cannot run: {reason}")
    pytest.skip(f"no real systemd on this machine: {reason}")


@pytest.fixture(scope="session")
def systemd_host() -> Iterator[realsystemd.Container]:
    """systemd 252 as PID 1 over the cached rootfs, infratool from this tree in /opt/infratool."""
    try:
        layers = realsystemd.rootfs()
        container = realsystemd.boot(layers)
    except realsystemd.RootfsUnavailable as exc:
        _unavailable(str(exc))
    realsystemd.log(f"systemd booted in {container.boot_seconds:.1f} s (pid {container.pid})")
    yield container
    container.stop()


@pytest.fixture
def sd_lab(
    systemd_host: realsystemd.Container, lab_subnet: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lab]:
    """Two lab hosts (snix, slax with tokend) whose lab dir and fleet repo the container sees at the same path."""
    root = systemd_host.share / f"lab{next(_labs)}"
    try:
        Lab(root).preflight()
    except LabUnavailable as exc:
        _unavailable(str(exc))
    # Not the `lab` fixture: its directory is under /tmp, which PrivateTmp=yes hides from the service.
    prefix = lab_subnet.rsplit(".", 1)[0]
    subnets = [lab_subnet, *(f"{prefix}.{random.randrange(256)}" for _ in range(31))]
    for subnet in subnets:
        lab = Lab(root, subnet=subnet)
        try:
            lab.up(2)
            break
        except AddressInUseError:
            lab.down()
    else:
        raise RuntimeError("no free loopback subnet")
    try:
        services.start_tokend(lab)
        key = lab.root / "age.key"
        ensure_operator_repo(lab.flake_dir, key)
        monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
        yield lab
    finally:
        systemd_host.systemctl("disable", "--now", TIMER)
        systemd_host.systemctl("stop", SERVICE)
        systemd_host.systemctl("reset-failed")
        for unit in (SERVICE, TIMER):
            (systemd_host.root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        systemd_host.systemctl("daemon-reload")
        lab.down()


def write_policy(
    lab: Lab, *, verify: str | None = None, max_age: str = "7d", notify_url: str | None = None
) -> None:
    """A policy with one secret, tokend's token on slax; ``verify`` defaults to tokend accepting it."""
    address = lab.host(services.TOKEND_HOST).address
    check = (
        "read -r token && printf 'Authorization: Bearer %s\\n' \"$token\" | "
        f"curl -fsS -o /dev/null -H @- http://{address}:{services.TOKEND_PORT}/"
    )
    policy: dict = {
        "secrets": {
            "tokend/token": {
                "file": "secrets/lab.yaml",
                "generator": "hex",
                "params": {"bytes": 24},
                "max_age": max_age,
                "consumers": [
                    {
                        "host": services.TOKEND_HOST,
                        "file": {"path": "/var/lib/tokend/token", "mode": "0600"},
                        "reload": 'kill -HUP "$(cat /run/tokend.pid)"',
                        "verify": verify or check,
                    }
                ],
            }
        }
    }
    if notify_url:
        policy["notify"] = {"url": notify_url, "events": ["failure"]}
    (lab.flake_dir / "secrets" / "rotation.yaml").write_text(yaml.safe_dump(policy))


def token(lab: Lab) -> str | None:
    """The token in sops (decrypted on the host with the operator key)."""
    store = SopsStore(lab.flake_dir / "secrets")
    if not store.exists("lab.yaml"):
        return None
    return str(store.read("lab.yaml")["tokend/token"].reveal())


def tokend_accepts(lab: Lab, value: str) -> bool:
    address = lab.host(services.TOKEND_HOST).address
    r = lab.exec(
        services.TOKEND_HOST,
        "read -r t; printf 'Authorization: Bearer %s\\n' \"$t\" | "
        f"curl -fsS -o /dev/null -H @- http://{address}:{services.TOKEND_PORT}/",
        input=value.encode() + b"\n",
    )
    return r.returncode == 0


def install(c: realsystemd.Container, lab: Lab, *extra: str) -> None:
    """``infratool timer install`` inside the container, then daemon-reload."""
    r = c.run(
        INFRATOOL,
        "-i",
        str(lab.inventory_path),
        "timer",
        "install",
        "--age-key-file",
        str(lab.root / "age.key"),
        "--force",
        *extra,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    c.systemctl("daemon-reload", check=True)


RUN_PROPS = ("ActiveState", "Result", "ExecMainStatus", "ExecMainExitTimestampMonotonic", "InvocationID")


def wait_for_run(c: realsystemd.Container, previous: str = "0", timeout: float = 180) -> dict[str, str]:
    """Wait until a run of the service newer than the one that exited at ``previous`` has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = c.show(SERVICE, *RUN_PROPS)
        if s["ExecMainExitTimestampMonotonic"] not in ("0", previous) and s["ActiveState"] in (
            "inactive",
            "failed",
        ):
            return s
        time.sleep(1)
    status = c.systemctl("status", SERVICE).stdout + c.run("journalctl", "--no-pager", "-n", "40").stdout
    raise AssertionError(
        f"{SERVICE} did not run within {timeout:.0f} s: {c.show(SERVICE, *RUN_PROPS)}\n{status}"
    )


def journal(c: realsystemd.Container, invocation: str) -> str:
    """What one run of the service logged."""
    return c.run("journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_INVOCATION_ID={invocation}").stdout


def test_the_timer_fires_rotates_a_due_secret_then_finds_nothing_due(systemd_host, sd_lab):
    c, lab = systemd_host, sd_lab
    write_policy(lab)
    # Every 10 s; AccuracySec=1min in the unit lets systemd coalesce that to about one run a minute.
    install(c, lab, "--on-calendar", "*:*:0/10", "--randomized-delay", "0")
    c.systemctl("enable", "--now", TIMER, check=True)
    assert token(lab) is None

    first = wait_for_run(c)
    assert (first["Result"], first["ExecMainStatus"]) == ("success", "0"), journal(c, first["InvocationID"])
    assert (
        c.show(TIMER, "LastTriggerUSecMonotonic")["LastTriggerUSecMonotonic"] != "0"
    )  # the timer started it
    rotated = token(lab)
    assert rotated and tokend_accepts(lab, rotated)
    audit = c.root / "var/log/infratool/audit.jsonl"
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert records and rotated not in audit.read_text()

    second = wait_for_run(c, first["ExecMainExitTimestampMonotonic"])
    assert (second["Result"], second["ExecMainStatus"]) == ("success", "0"), journal(
        c, second["InvocationID"]
    )
    assert second["InvocationID"] != first["InvocationID"]
    assert token(lab) == rotated and tokend_accepts(lab, rotated)  # nothing was due: nothing rotated


class _Inbox(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.received.append((self.headers.get("Title", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def inbox() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP server on loopback collecting POSTed notifications: (url, [(title, body)])."""
    handler = type("Inbox", (_Inbox,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/notify", handler.received
    server.shutdown()
    server.server_close()


def test_a_failing_verify_fails_the_unit_and_notifies(systemd_host, sd_lab, inbox):
    c, lab = systemd_host, sd_lab
    url, received = inbox
    write_policy(lab, verify="exit 1", notify_url=url)
    install(c, lab)
    started = c.systemctl("start", SERVICE)
    assert started.returncode != 0
    s = c.show(SERVICE, *RUN_PROPS)
    assert (s["Result"], s["ExecMainStatus"]) == ("exit-code", "1"), journal(c, s["InvocationID"])
    failed = c.systemctl("is-failed", SERVICE)
    assert failed.returncode == 0 and failed.stdout.strip() == "failed"
    assert "verify failed on slax" in journal(c, s["InvocationID"])
    # The notification crossed the sandbox (RestrictAddressFamilies, no capabilities) to loopback.
    assert len(received) == 1, received
    title, body = received[0]
    assert title == "infratool failure" and "tokend/token" in body


def test_the_age_identity_arrives_only_through_the_credential(systemd_host, sd_lab, cli):
    c, lab = systemd_host, sd_lab
    key = lab.root / "age.key"
    secret_key = next(line for line in key.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    # A first rotation from the host creates the sops file; max_age 1s makes it due again, so the
    # service must decrypt the file (with the credential) to rotate it.
    write_policy(lab, max_age="1s")
    first = cli("-i", lab.inventory_path, "secrets", "rotate", "--due", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    before = token(lab)
    # The key file belongs to another user now: root in the service, without capabilities, could
    # not read it by its path; only the service manager can, to hand it over as a credential.
    os.chown(key, 65534, 65534)
    key.chmod(0o400)
    slow = f"sleep 4; {_tokend_verify(lab)}"
    write_policy(lab, max_age="1s", verify=slow)
    install(c, lab)
    direct = c.run(
        "systemd-run", "--wait", "--quiet", "--pipe", "-p", "CapabilityBoundingSet=", "cat", str(key)
    )
    assert direct.returncode != 0 and "Permission denied" in direct.stderr

    # Blocking start in a thread: an unreferenced oneshot is unloaded once it ends, so its
    # ExecMainStatus cannot be read afterwards; systemctl's own exit code says how it went.
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    runner = threading.Thread(target=lambda: done.update(start=c.systemctl("start", SERVICE, timeout=180)))
    runner.start()
    seen: list[str] = []
    other_user: list[str] = []
    delivered = invocation = ""
    while runner.is_alive():
        s = c.show(SERVICE, "ActiveState", "ControlGroup", "InvocationID")
        if s["ActiveState"] != "activating" or not s["ControlGroup"]:
            time.sleep(0.1)
            continue
        invocation = s["InvocationID"]
        procs = c.cgroup / s["ControlGroup"].lstrip("/") / "cgroup.procs"
        for pid in procs.read_text().split() if procs.exists() else []:
            try:
                seen.append(
                    Path(f"/proc/{pid}/environ").read_text() + Path(f"/proc/{pid}/cmdline").read_text()
                )
            except OSError:
                continue
        if seen and not other_user:
            with contextlib.suppress(OSError):
                delivered = (c.root / CREDENTIALS.lstrip("/") / CREDENTIAL).read_text()
            # Another unit, as another user, tries the credential while the service holds it.
            for user in ("-pUser=nobody", "-pDynamicUser=yes"):
                r = c.run(
                    "systemd-run", "--wait", "--quiet", "--pipe", user, "cat", f"{CREDENTIALS}/{CREDENTIAL}"
                )
                other_user.append(f"{r.returncode} {r.stdout} {r.stderr}")
        time.sleep(0.1)
    runner.join()
    assert done["start"].returncode == 0, journal(c, invocation)
    assert delivered == key.read_text()  # the credential held the identity, and only there
    after = token(lab)
    assert after != before and tokend_accepts(lab, after)  # decrypted, rotated, delivered

    assert seen, "no process of the service was observed"
    assert not [p for p in seen if secret_key in p], "the age identity is in a process's environment or argv"
    assert any(f"SOPS_AGE_KEY_FILE={CREDENTIALS}/{CREDENTIAL}" in p for p in seen)
    assert len(other_user) == 2 and all(
        not r.startswith("0 ") and "Permission denied" in r for r in other_user
    ), other_user
    # The credential is gone with the run.
    assert not (c.root / CREDENTIALS.lstrip("/")).exists() or not any(
        (c.root / CREDENTIALS.lstrip("/")).iterdir()
    )


def _tokend_verify(lab: Lab) -> str:
    address = lab.host(services.TOKEND_HOST).address
    return (
        "read -r token && printf 'Authorization: Bearer %s\\n' \"$token\" | "
        f"curl -fsS -o /dev/null -H @- http://{address}:{services.TOKEND_PORT}/"
    )


def test_the_loaded_unit_scores_below_2_and_odd_paths_reach_systemd_literally(systemd_host, sd_lab, tmp_path):
    c, lab = systemd_host, sd_lab
    write_policy(lab)
    install(c, lab)
    security = c.run("systemd-analyze", "security", SERVICE)
    score = re.search(rf"Overall exposure level for {re.escape(SERVICE)}: ([\d.]+)", security.stdout)
    assert score and float(score.group(1)) < 2.0, security.stdout[-800:]

    # Issue 22.3 under the real parser: blanks, %, $ and quotes in paths come out as written.
    odd = c.share / "fleet 100%i $HOME 'q'"
    odd.mkdir()
    key = c.share / "age%n.key"
    r = c.run(
        INFRATOOL, "-i", str(odd / "hosts.yaml"), "timer", "install", "--flake", str(odd),
        "--age-key-file", str(key), "--force",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    c.systemctl("daemon-reload", check=True)
    shown = c.show(SERVICE, "WorkingDirectory", "ReadWritePaths", "LoadError")
    assert shown["LoadError"] in ("", " ", '""'), shown
    assert shown["WorkingDirectory"] == str(odd)
    assert _unquote_posix(shown["ReadWritePaths"]) == str(odd)
    # `show` prints neither LoadCredential= nor argv literally; running the unit proves them:
    # systemd sets up the credential from the literal path and enters the literal directory
    # (else status 243 CREDENTIALS or 200 CHDIR), then infratool exits 3 naming the literal
    # inventory path it was given (no specifier, no $HOME expanded), which does not exist.
    key.write_text("AGE-SECRET-KEY-NOT-USED\n")
    c.systemctl("start", SERVICE)
    s = c.show(SERVICE, *RUN_PROPS)
    assert s["ExecMainStatus"] == "3", (s, journal(c, s["InvocationID"]))
    assert f"{odd}/hosts.yaml" in journal(c, s["InvocationID"])


def _unquote_posix(shown: str) -> str:
    """systemctl shows a path with blanks as a POSIX shell double-quoted word (``\\$`` for ``$``)."""
    if not (shown.startswith('"') and shown.endswith('"')):
        return shown
    return re.sub(r'\\([$`"\\])', r"\1", shown[1:-1])


def test_the_nixos_module_units_load_and_run_in_the_same_systemd(systemd_host, sd_lab):
    c, lab = systemd_host, sd_lab
    write_policy(lab)
    settings = {
        "exe": INFRATOOL,
        "flake": str(lab.flake_dir),
        "inventory": str(lab.inventory_path),
        "ageKeyFile": str(lab.root / "age.key"),
        "onCalendar": "*:*:0/10",
        "randomizedDelay": "0",
    }
    body = " ".join(f"{k} = {json.dumps(v)};" for k, v in settings.items())
    units = nix_eval(f"import ./nix/units.nix {{ {body} }}")
    assert set(units) == {SERVICE, TIMER}
    for name, text in units.items():
        (c.root / "etc/systemd/system" / name).write_text(text)
    # NixOS puts nixpkgs' sops on the service's PATH; here it is the wheel's, which pip leaves
    # without its executable bit (`timer install` sets it; nothing ran that in this test).
    sops = c.run(
        f"{realsystemd.VENV}/bin/python", "-c", "from infratool.secrets.sopsbin import find_sops; find_sops()"
    )
    assert sops.returncode == 0, sops.stderr
    c.systemctl("daemon-reload", check=True)
    for unit in (SERVICE, TIMER):
        s = c.show(unit, "LoadState", "LoadError")
        assert s["LoadState"] == "loaded", s
    # NixOS enables the timer through wantedBy; starting it is what that amounts to at boot.
    c.systemctl("start", TIMER, check=True)
    assert c.show(TIMER, "ActiveState")["ActiveState"] == "active"
    started = c.systemctl("start", SERVICE)
    s = c.show(SERVICE, *RUN_PROPS)
    assert started.returncode == 0 and s["ExecMainStatus"] == "0", journal(c, s["InvocationID"])
    assert tokend_accepts(lab, token(lab))
