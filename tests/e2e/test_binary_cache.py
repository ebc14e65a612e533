"""Binary cache on the lab: snix serves a signed cache over HTTP, the other hosts substitute from it.

Every assertion is about real state: nginx answering on snix's address, paths
fetched by a client's real Nix into a store of its own (so the lab host's own
/nix cannot hide the fetch), signatures checked by Nix itself, the key file's
mode, the sops file, the rotation state file, and processes killed with
SIGKILL between rotation phases.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import PLAYBOOKS, files_containing
from exectrace import both_ends
from helpers import SshdLogs, nix_eval, nix_parse, ok
from replay import as_data

from infratool import inventory
from infratool import playbook as playbooks
from infratool.inventory import Host
from infratool.options import RunOptions
from infratool.remote import FileWrite, put_files_script
from infratool.rotation import state
from infratool.runner import Runner
from infratool.secrets.generators import generate
from infratool.secrets.secret import Secret
from infratool.secrets.store import SopsStore
from infratool.tasks.binary_cache import filetext as render
from infratool.tasks.binary_cache.keys import Keys, public_key
from infratool.tasks.binary_cache.spec import CacheSpec, check_cache_url, check_key_name

PLAYBOOK = PLAYBOOKS / "binary-cache.yaml"
CLIENTS = ("slax", "brix", "nixtv-player")
NIX = "nix --extra-experimental-features nix-command"
STORE = "/var/lib/nixcache"
KEY_FILE = "/var/lib/infratool/binary-cache/snix-cache/secret-key"
NOT_SIGNED = "is not signed by any of the keys in 'trusted-public-keys'"


def applying(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(host, description) of every change the run reported applying.

    Progress lines are text by default (``[  1.37s] host: applying what``)
    and JSON events with ``--log-format json``: both are read.
    """
    found = []
    for line in result.stderr.splitlines():
        text = re.match(r"^\[\s*[\d.]+s\] (\S+): applying (.*)$", line)
        if text:
            found.append((text.group(1), text.group(2)))
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "progress" and event.get("status") == "applying":
            found.append((event.get("host", ""), event.get("message", "")))
    return found


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``tmp_path/name`` and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def build(lab, host: str = "snix", hook: bool = False, dep: bool = False) -> str:
    """Build a new input-addressed path on ``host`` (with a dependency if ``dep``); its out path.

    Input-addressed on purpose: Nix accepts content-addressed paths without
    any signature. ``hook`` False keeps the post-build hook from pushing it.
    """
    nonce = os.urandom(6).hex()
    inner = (
        f'derivation {{ name = "bc-dep-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        f'args = [ "-c" "echo dep > $out" ]; }}'
    )
    body = f"echo ${{{inner}}} > $out" if dep else f"echo {nonce} > $out"
    expr = (
        f'derivation {{ name = "bc-test-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        f'args = [ "-c" "{body}" ]; }}'
    )
    argv = ["nix-build", "--no-out-link", "-E", expr]
    if not hook:
        argv += ["--option", "post-build-hook", ""]
    return ok(lab.exec(host, argv, timeout=120)).stdout.decode().strip()


def fetch(lab, client: str, *paths: str, keys: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Substitute ``paths`` on ``client`` into a fresh store of its own, with its own nix.conf.

    ``keys`` replaces the trusted public keys (else the client's configured
    ones). A private narinfo cache, so nothing cached earlier answers.
    """
    root = f"/tmp/clientstore-{os.urandom(6).hex()}"
    extra = f" --option trusted-public-keys '{keys}'" if keys is not None else ""
    return lab.exec(
        client,
        f'XDG_CACHE_HOME={root}/cache nix-store --store "local?root={root}/store" --realise {" ".join(paths)}{extra}',
        timeout=120,
    )


def sigs(lab, client: str, path: str) -> str:
    """Signatures of ``path`` as the cache serves them (read from the client over HTTP)."""
    url = f"http://{lab.host('snix').address}"
    res = ok(
        lab.exec(
            client, f"XDG_CACHE_HOME=/tmp/c-{os.urandom(4).hex()} {NIX} path-info --store {url} --sigs {path}"
        )
    )
    return res.stdout.decode()


def sops_keys(lab) -> dict[str, str]:
    """The cache's keys from the lab repo's sops file (the test holds the operator age key)."""
    values = SopsStore(lab.flake_dir / "secrets").read("binary-cache.yaml")
    return {
        k.rsplit("/", 1)[-1]: v.reveal()
        for k, v in values.items()
        if k.startswith("binary-cache/snix-cache/")
    }


def push_playbook(tmp_path: Path, paths: list[str], chunk: int = 50) -> Path:
    """A playbook pushing ``paths`` (``chunk`` paths per change)."""
    return write(
        tmp_path,
        "push.yaml",
        "tasks:\n  - task: binary_cache.push\n"
        f"    with: {{server: snix, name: snix-cache, chunk: {chunk}, paths: {json.dumps(paths)}}}\n",
    )


FLAKE = """\
{
  description = "lab fleet";
  nixConfig = {
    # infratool:binary-cache snix-cache begin
    # infratool:binary-cache snix-cache end
    bash-prompt = "fleet> ";
  };
  outputs = { self }: { };
}
"""


def test_cache_serves_signed_paths_refuses_others_and_leaks_nothing(fleet, cli, tmp_path, _private_audit_log):
    lab, inv = fleet, fleet.inventory_path
    snix = lab.host("snix")
    (lab.flake_dir / "flake.nix").write_text(FLAKE)
    with both_ends(lab, cli, tmp_path / "execs") as seen:
        plan = seen.cli("-i", inv, "--json", "plan", PLAYBOOK)
        run = seen.cli("-i", inv, "-vv", "run", PLAYBOOK, "--yes")
        again = seen.cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode")
    ok(run)
    seen.assert_recorded(min_sessions=len(CLIENTS) + 1)
    assert again.returncode == 0 and "Plan: 0 change(s)" in again.stdout, again.stdout + again.stderr
    assert "generate signing key snix-cache-1" in run.stdout
    # Each client's probe is a check, after its changes: counted apart, shown under verified.
    planned = json.loads(plan.stdout)
    assert {c["host"] for c in planned["changes"] if c["action"] == "check"} == set(CLIENTS)
    assert planned["summary"]["checks"] == len(CLIENTS)
    assert "substituted" in run.stdout and "verified" in run.stdout

    keys = sops_keys(lab)
    secret = keys["secret-key"]
    public = public_key(Secret(secret))
    assert secret.startswith("snix-cache-1:") and "next-secret-key" not in keys

    # nginx answers on snix's own address.
    info = ok(
        subprocess.run(
            ["curl", "-fsS", f"http://{snix.address}/nix-cache-info"], capture_output=True, text=True
        )
    )
    assert "StoreDir: /nix/store" in info.stdout

    # The key: 0600 on the server, identical to sops, nowhere else.
    key = snix.path(KEY_FILE)
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text() == secret
    for name in CLIENTS:
        for private in ("/etc/nix", "/etc/ssh", "/var/lib", "/root", "/tmp", "/run", "/nix/var"):
            assert files_containing(lab.host(name).path(private), secret) == [], f"key on {name}"

    # Clients: a fragment included from nix.conf, trusting only this key for this cache.
    conf = lab.host("slax").path("/etc/nix/binary-cache-snix-cache.conf").read_text()
    assert f"extra-trusted-public-keys = {public}\n" in conf
    assert f"extra-substituters = http://{snix.address}\n" in conf
    assert (
        "!include /etc/nix/binary-cache-snix-cache.conf"
        in lab.host("slax").path("/etc/nix/nix.conf").read_text()
    )

    # The post-build hook pushes what snix builds, signed; a client fetches it over HTTP
    # into a store of its own, and the signature verifies against the cache key.
    hooked = build(lab, hook=True)
    got = ok(fetch(lab, "nixtv-player", hooked))
    assert f"from 'http://{snix.address}'" in got.stderr.decode()
    assert "snix-cache-1:" in sigs(lab, "brix", hooked)
    ok(
        lab.exec(
            "brix",
            f"XDG_CACHE_HOME=/tmp/v {NIX} store verify --store http://{snix.address} "
            f"--trusted-public-keys '{public}' {hooked}",
        )
    )

    # Unsigned, or signed by another key: Nix on the client refuses, naming the signature problem.
    unsigned, foreign = build(lab), build(lab)
    ok(lab.exec("snix", f"{NIX} copy --to file://{STORE} {unsigned}"))
    ok(
        lab.exec(
            "snix",
            "nix-store --generate-binary-cache-key evil-1 /tmp/evil.sk /tmp/evil.pk && "
            f"{NIX} copy --to 'file://{STORE}?secret-key=/tmp/evil.sk' {foreign}",
        )
    )
    for path in (unsigned, foreign):
        refused = fetch(lab, "slax", path)
        assert refused.returncode != 0 and NOT_SIGNED in refused.stderr.decode()
    # ... and accepted when that other key is the trusted one: the refusal was about the key.
    ok(fetch(lab, "slax", foreign, keys=snix.path("/tmp/evil.pk").read_text().strip()))

    # The flake: generated nixConfig file and the marked block in flake.nix, both valid Nix.
    generated = lab.flake_dir / "nix/binary-cache/snix-cache.nix"
    for f in (generated, lab.flake_dir / "flake.nix"):
        nix_parse(f)
    flake_cfg = nix_eval(f"(import {lab.flake_dir}/flake.nix).nixConfig")
    assert flake_cfg == {
        "extra-substituters": [f"http://{snix.address}"],
        "extra-trusted-public-keys": [public],
        "bash-prompt": "fleet> ",
    }
    assert nix_eval(generated) == {
        "extra-substituters": [f"http://{snix.address}"],
        "extra-trusted-public-keys": [public],
    }

    # Still converged after all of that (foreign paths in the cache are not ours to fix).
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0

    # Canary: the key is in no output, argv, log or leftover temp file.
    for out in (plan.stdout, plan.stderr, run.stdout, run.stderr, again.stdout, again.stderr):
        assert secret not in out
    assert seen.hits(secret) == [], "signing key in a process's argv or environment"
    assert secret not in _private_audit_log.read_text()
    assert files_containing(tmp_path / "controller-tmp", secret) == []
    for h in lab.hosts():
        assert files_containing(h.path("/tmp"), secret) == []
        assert files_containing(h.path("/var/log"), secret) == []
    assert [p.name for p in snix.path(KEY_FILE).parent.iterdir() if p.name.startswith(".infratool")] == []


def test_push_paths_and_flake_outputs_signed_once(fleet, cli, tmp_path):
    lab, inv = fleet, fleet.inventory_path
    snix = lab.host("snix")
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    # Push: a path with a dependency, two changes of one path each (progress), then nothing.
    top = build(lab, dep=True)
    pb = push_playbook(tmp_path, [top], chunk=1)
    first = cli("-i", inv, "plan", pb, "--detailed-exitcode")
    assert (
        first.returncode == 2
        and "push paths 1-1 of 2" in first.stdout
        and "push paths 2-2 of 2" in first.stdout
    )
    # Through a saved plan: the push actions apply from their args, in another process.
    saved = tmp_path / "push.plan.json"
    ok(cli("-i", inv, "plan", pb, "-o", saved))
    pushed = ok(cli("-i", inv, "apply", saved, "--yes"))
    assert any(what.startswith("push paths 2-2 of 2") for _, what in applying(pushed)), pushed.stderr
    assert cli("-i", inv, "plan", pb, "--detailed-exitcode").returncode == 0

    # A flake output, built on the server by the push itself (as CI would ask), then nothing.
    flake = snix.path("/var/lib/ci/flake/flake.nix")
    flake.parent.mkdir(parents=True)
    drv = (
        f'derivation {{ name = "ci-{os.urandom(4).hex()}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        'args = [ "-c" "echo ci > $out" ]; }'
    )
    flake.write_text(f"{{ outputs = {{ self }}: {{ packages.x86_64-linux.default = {drv}; }}; }}\n")
    ci = write(
        tmp_path,
        "ci.yaml",
        "tasks:\n  - task: binary_cache.push\n"
        "    with: {server: snix, name: snix-cache, installables: ['path:/var/lib/ci/flake']}\n",
    )
    assert "build path:/var/lib/ci/flake and push its closure" in cli("-i", inv, "plan", ci).stdout
    ok(cli("-i", inv, "run", ci, "--yes"))
    assert cli("-i", inv, "plan", ci, "--detailed-exitcode").returncode == 0
    built = (
        ok(
            lab.exec(
                "snix",
                "nix --extra-experimental-features 'nix-command flakes' path-info path:/var/lib/ci/flake",
            )
        )
        .stdout.decode()
        .strip()
    )
    ok(fetch(lab, "slax", built))
    assert sops_keys(lab)["secret-key"] not in pushed.stdout + pushed.stderr

    # Both pushes are signed by the cache key and fetched over HTTP by clients.
    ok(fetch(lab, "brix", top))
    assert "snix-cache-1:" in sigs(lab, "brix", top) and "snix-cache-1:" in sigs(lab, "slax", built)


STEPS = (
    "stored",
    "trust-new:config",
    "trust-new",
    "resign:key",
    "resign",
    "drop-old:config",
    "drop-old",
    "promoting",
)
"""The rotation's marks in the state file, in order (the engine's begin, the steps, the promotion)."""


def rotation_phase(lab) -> str | None:
    """The cache key's rotation mark in the lab repo's state file (None: idle or unreadable mid-write)."""
    path = state.state_path(lab.flake_dir / "secrets")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return ((data or {}).get("rotations") or {}).get("cache-key/snix-cache", {}).get("phase")


def run_until_phase(lab, tmp_path: Path, pb: Path, phase: str) -> str | None:
    """Start a rotation run; SIGKILL it once the state file reaches ``phase`` (or a later one).

    Returns the phase it was killed at, or None if the run finished first.
    """
    env = {**os.environ, "NO_COLOR": "1", "TMPDIR": str(tmp_path / "controller-tmp")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "infratool", "-i", str(lab.inventory_path), "run", str(pb), "--yes"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen = rotation_phase(lab)
            if seen in STEPS and STEPS.index(seen) >= STEPS.index(phase):
                proc.send_signal(signal.SIGKILL)
                return seen
            time.sleep(0.002)
        return None
    finally:
        proc.kill()
        proc.wait()


def test_key_rotation_with_overlap_survives_kill_9_between_phases(fleet, cli, tmp_path):
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    old = sops_keys(lab)["secret-key"]
    before = build(lab)
    ok(cli("-i", inv, "run", push_playbook(tmp_path, [before]), "--yes"))
    pb = write(
        tmp_path,
        "rotate.yaml",
        "tasks:\n  - task: binary_cache.rotate_key\n"
        "    with: {server: snix, name: snix-cache, clients: [slax, brix, nixtv-player], generation: 2}\n",
    )
    (tmp_path / "controller-tmp").mkdir(exist_ok=True)
    assert "start key rotation: store the next signing key snix-cache-2" in cli("-i", inv, "plan", pb).stdout

    killed = []
    for phase in STEPS:
        seen = run_until_phase(lab, tmp_path, pb, phase)
        if seen is None:
            break  # finished before the kill (a loaded machine): what was killed still counts
        killed.append(seen)
        # Whatever the kill interrupted: every client, with its own settings, fetches
        # an old path and one built (and pushed by the hook) just now.
        fresh = build(lab, hook=True)
        with ThreadPoolExecutor(len(CLIENTS)) as pool:
            for result in pool.map(lambda c, fresh=fresh: fetch(lab, c, before, fresh), CLIENTS):
                ok(result)

    assert killed[0] == "stored" and len(set(killed)) >= 3, killed
    ok(cli("-i", inv, "run", pb, "--yes"))
    assert cli("-i", inv, "plan", pb, "--detailed-exitcode").returncode == 0
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0
    keys = sops_keys(lab)
    assert keys["secret-key"].startswith("snix-cache-2:") and "next-secret-key" not in keys
    new_public, old_public = public_key(Secret(keys["secret-key"])), public_key(Secret(old))
    assert rotation_phase(lab) is None
    for client in CLIENTS:
        conf = lab.host(client).path("/etc/nix/binary-cache-snix-cache.conf").read_text()
        assert f"extra-trusted-public-keys = {new_public}\n" in conf and old_public not in conf
    assert lab.host("snix").path(KEY_FILE).read_text() == keys["secret-key"]
    # The whole cache verifies with the new key alone; a new path is not signed by the old one.
    after = build(lab, hook=True)
    for path in (before, after):
        ok(
            lab.exec(
                "slax",
                f"XDG_CACHE_HOME=/tmp/v2 {NIX} store verify --store http://{lab.host('snix').address} "
                f"--trusted-public-keys '{new_public}' {path}",
            )
        )
    assert NOT_SIGNED in fetch(lab, "brix", after, keys=old_public).stderr.decode()
    generated = (lab.flake_dir / "nix/binary-cache/snix-cache.nix").read_text()
    assert new_public in generated and old_public not in generated


def plan_then_apply_from_data(lab, book: Path) -> tuple[list, object]:
    """Plan ``book``; apply the plan rebuilt from data by a fresh runner (as a saved plan is)."""
    inv = inventory.load(lab.inventory_path)
    with Runner(inv, playbooks.load(book, inv), RunOptions()) as planner:
        planned = planner.plan()
    with Runner(inv, playbooks.load(book, inv), RunOptions()) as applier:
        applier.gather()
        result = applier.apply(as_data(planned, ("binary_cache.server", "binary_cache.rotate_key")))
    return planned.changes, result


def test_the_keys_a_plan_shows_are_the_keys_installed_when_applied_from_data(fleet, tmp_path):
    """Issue 16 §3: signing keys are made at plan time; the key the plan shows is the one in use."""
    lab = fleet
    changes, result = plan_then_apply_from_data(lab, PLAYBOOK)
    assert result.exit_code == 0, result.to_dict()
    [shown] = [c.diff for c in changes if c.description.startswith("generate signing key snix-cache-1")]
    first = shown.removeprefix("+ public key ")
    assert public_key(Secret(lab.host("snix").path(KEY_FILE).read_text())) == first
    assert public_key(Secret(sops_keys(lab)["secret-key"])) == first

    rotate = write(
        tmp_path,
        "rotate.yaml",
        "tasks:\n  - task: binary_cache.rotate_key\n"
        "    with: {server: snix, name: snix-cache, clients: [slax, brix, nixtv-player], generation: 2}\n",
    )
    changes, result = plan_then_apply_from_data(lab, rotate)
    assert result.exit_code == 0, result.to_dict()
    [shown] = [c.diff for c in changes if c.description.startswith("start key rotation")]
    second = shown.removeprefix("+ next public key ")
    assert second.startswith("snix-cache-2:") and second != first
    keys = sops_keys(lab)
    assert public_key(Secret(keys["secret-key"])) == second and "next-secret-key" not in keys
    assert lab.host("snix").path(KEY_FILE).read_text() == keys["secret-key"]
    for client in CLIENTS:
        conf = lab.host(client).path("/etc/nix/binary-cache-snix-cache.conf").read_text()
        assert f"extra-trusted-public-keys = {second}\n" in conf and first not in conf


def test_secrets_status_shows_the_cache_and_builder_keys_and_secrets_rotate_rotates_the_cache_key(fleet, cli):
    """Issue 16 §1 must-show: every kind in ``secrets status --json``; a cache-key rotation via ``secrets rotate``."""
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    old = sops_keys(lab)["secret-key"]
    # The fleet repo keeps its playbooks beside hosts.yaml: the kinds read their entries there.
    shutil.copytree(PLAYBOOKS, Path(inv).parent / "playbooks")

    status = cli("-i", inv, "--json", "secrets", "status")
    rows = {(r["kind"], r["name"]): r for r in json.loads(status.stdout)["secrets"]}
    cache = rows[("cache-key", "snix-cache")]
    assert cache["max_age"] == "365d" and cache["due"] is False and cache["generation"] == 1
    assert cache["age_seconds"] is not None and cache["age_seconds"] < 3600
    assert cache["consumers"] == ["snix", "slax", "brix", "nixtv-player"]
    for client in CLIENTS:  # no remote-builders run yet: never recorded, so due
        builder = rows[("builder-key", client)]
        assert builder["max_age"] == "90d" and builder["due"] is True and builder["age"] == "never"

    plan = cli("-i", inv, "secrets", "rotate", "cache-key/snix-cache", "--dry-run")
    assert "start key rotation: store the next signing key snix-cache-2" in plan.stdout, plan.stdout
    assert sops_keys(lab)["secret-key"] == old  # a dry run changes nothing
    ok(cli("-i", inv, "secrets", "rotate", "cache-key/snix-cache", "--yes"))
    keys = sops_keys(lab)
    assert keys["secret-key"].startswith("snix-cache-2:") and "next-secret-key" not in keys
    new_public = public_key(Secret(keys["secret-key"]))
    for client in CLIENTS:
        conf = lab.host(client).path("/etc/nix/binary-cache-snix-cache.conf").read_text()
        assert f"extra-trusted-public-keys = {new_public}\n" in conf and public_key(Secret(old)) not in conf
    after = {
        (r["kind"], r["name"]): r
        for r in json.loads(cli("-i", inv, "--json", "secrets", "status").stdout)["secrets"]
    }
    assert after[("cache-key", "snix-cache")]["generation"] == 2
    assert after[("cache-key", "snix-cache")]["status"] == "ok"
    # Rotated, not due: the playbook's own rotate_key entry plans nothing.
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0


def test_a_saved_rotation_plan_installs_the_key_it_shows(fleet, cli, tmp_path):
    """``plan -o`` of a cache key rotation shows the next key; ``apply`` in another process installs it."""
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    rotate = write(
        tmp_path,
        "rotate.yaml",
        "tasks:\n  - task: binary_cache.rotate_key\n"
        "    with: {server: snix, name: snix-cache, clients: [slax, brix, nixtv-player], generation: 2}\n",
    )
    saved = tmp_path / "plan.json"
    planned = json.loads(ok(cli("-i", inv, "--json", "plan", rotate, "-o", saved)).stdout)
    [begin] = [c for c in planned["changes"] if c["description"].startswith("start key rotation")]
    shown = begin["diff"].removeprefix("+ next public key ")
    assert shown.startswith("snix-cache-2:")
    assert sops_keys(lab).get("next-secret-key") is None  # planning stored nothing
    ok(cli("-i", inv, "apply", saved, "--yes"))
    keys = sops_keys(lab)
    assert public_key(Secret(keys["secret-key"])) == shown and "next-secret-key" not in keys
    assert lab.host("snix").path(KEY_FILE).read_text() == keys["secret-key"]


def test_crash_right_after_storing_the_next_key_resumes_in_the_site_playbook(fleet, cli):
    """The run that stored next-secret-key died before its phase marker: the normal playbook resumes it."""
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))
    store = SopsStore(lab.flake_dir / "secrets")
    store.write(
        "binary-cache.yaml",
        {
            "binary-cache/snix-cache/next-secret-key": generate(
                "nix-cache-key", {"name": "snix-cache-2"}
            ).value
        },
    )
    assert rotation_phase(lab) is None
    plan = cli("-i", inv, "plan", PLAYBOOK).stdout
    assert "resume key rotation snix-cache-1 → snix-cache-2 at phase trust-new" in plan
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes"))  # every verify passes on the way
    keys = sops_keys(lab)
    assert keys["secret-key"].startswith("snix-cache-2:") and "next-secret-key" not in keys
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0


def test_bad_input_exits_3_and_touches_nothing(lab, cli, tmp_path):
    logs = SshdLogs(lab)
    cases = {
        "tasks:\n  - task: binary_cache.server\n    with:\n      server: snix\n      name: 'bad name:1'\n": (
            5,
            "invalid key name",
        ),
        "tasks:\n  - task: binary_cache.client\n    with:\n      server: snix\n      clients: [slax]\n"
        "      url: ftp://snix/cache\n": (6, "must start with http://"),
        "tasks:\n  - task: binary_cache.client\n    with:\n      server: snix\n      clients: [slax, nope]\n": (
            5,
            "'nope' is not a host",
        ),
        "tasks:\n  - task: binary_cache.push\n    with:\n      server: nowhere\n      paths: [/nix/store/x]\n": (
            4,
            "'nowhere' is not a host",
        ),
        "tasks:\n  - task: binary_cache.rotate_key\n    with:\n      server: snix\n      clients: [slax]\n"
        "      max_age: soon\n": (6, "malformed duration"),
    }
    for text, (line, message) in cases.items():
        pb = write(tmp_path, "bad.yaml", text)
        r = cli("-i", lab.inventory_path, "run", pb, "--yes")
        assert r.returncode == 3, r.stdout + r.stderr
        assert f"{pb}:{line}:" in r.stderr and message in r.stderr, r.stderr
    logs.assert_no_contact()
    assert not (lab.flake_dir / "secrets").exists()


def test_nixos_hosts_get_generated_nix_that_parses(fleet, cli, tmp_path):
    data = yaml.safe_load(fleet.inventory_path.read_text())
    data["hosts"]["slax"]["os"] = "nixos"
    inv = write(tmp_path, "hosts.yaml", yaml.safe_dump(data))
    ok(cli("-i", inv, "run", PLAYBOOK, "--yes", "--no-deploy"))
    public = public_key(Secret(sops_keys(fleet)["secret-key"]))
    client = fleet.flake_dir / "hosts/slax/generated/binary-cache-snix-cache.nix"
    nix_parse(client)
    settings = nix_eval(f"(import {client} {{}}).nix.settings")
    assert settings == {
        "substituters": [f"http://{fleet.host('snix').address}"],
        "trusted-public-keys": [public],
    }
    # The NixOS client was not touched imperatively; the linux ones were; a rerun plans nothing.
    assert not fleet.host("slax").path("/etc/nix/binary-cache-snix-cache.conf").exists()
    assert fleet.host("brix").path("/etc/nix/binary-cache-snix-cache.conf").exists()
    # With the same flags nothing is left; without --no-deploy, slax's deploy is still owed.
    assert cli("-i", inv, "plan", PLAYBOOK, "--no-deploy", "--detailed-exitcode").returncode == 0
    owed = cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode")
    assert owed.returncode == 2 and "deploy slax" in owed.stdout, owed.stdout + owed.stderr

    # A NixOS server: sops-nix key, nginx virtual host and the post-build hook, as Nix.
    data["hosts"]["snix"]["os"] = "nixos"
    inv = write(tmp_path, "hosts.yaml", yaml.safe_dump(data))
    server_only = write(
        tmp_path,
        "server.yaml",
        "tasks:\n  - task: binary_cache.server\n"
        "    with: {server: snix, name: snix-cache, post_build_hook: true}\n",
    )
    served = ok(cli("-i", inv, "run", server_only, "--yes", "--no-deploy"))
    server = fleet.flake_dir / "hosts/snix/generated/binary-cache-snix-cache-server.nix"
    nix_parse(server)
    stub = '{ config = { nix.package = "/NIX"; }; pkgs = { writeShellScript = name: text: text; }; }'
    module = nix_eval(
        f'let m = import {server} {stub}; s = m.sops.secrets."binary-cache/snix-cache/secret-key"; in '
        # toString: a path would be copied into the (controller's) store by --json.
        "{ inherit (m) services; secret = s // { sopsFile = toString s.sopsFile; }; "
        "hook = m.nix.settings.post-build-hook; }"
    )
    secret = module["secret"]
    assert secret["key"] == "binary-cache/snix-cache/secret-key" and secret["mode"] == "0600"
    assert secret["sopsFile"] == str(fleet.flake_dir / "secrets/binary-cache.yaml")
    vhost = module["services"]["nginx"]["virtualHosts"]["snix-cache"]
    assert vhost == {"listen": [{"addr": fleet.host("snix").address, "port": 80}], "root": STORE}
    hook = module["hook"]
    assert '[ -n "${OUT_PATHS:-}" ] || exit 0' in hook and "/NIX/bin/nix-store --query --outputs" in hook
    assert "secret-key=/run/secrets/binary-cache/snix-cache/secret-key" in hook
    # Nothing imperative on the NixOS server either: every change was in the flake repo.
    applied = applying(served)
    assert any(h == "local" and w.startswith("create hosts/snix/generated/") for h, w in applied), (
        served.stderr
    )
    assert not [w for h, w in applied if h == "snix"]


def test_checked_write_never_installs_a_cut_transfer(tmp_path):
    """The cache's files go through the engine's write, which never installs a cut transfer."""
    target = tmp_path / "key"
    target.write_text("old")
    content = b"new-key"
    script = put_files_script([FileWrite(str(target), content, 0o600)], [len(content)])
    for cut in (b"", content[:3], content):  # killed before, during, just before the final newline
        res = subprocess.run(["sh", "-c", script], input=cut, capture_output=True)
        assert res.returncode != 0
        assert target.read_text() == "old"
    ok(subprocess.run(["sh", "-c", script], input=content + b"\n", capture_output=True))
    assert target.read_text() == "new-key" and target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


# --- no lab: the pure parts -------------------------------------------------------------


def test_keys_by_phase_overlap_then_drop():
    old = generate("nix-cache-key", {"name": "c-1"}).value
    new = generate("nix-cache-key", {"name": "c-2"}).value
    po, pn = public_key(old), public_key(new)
    assert Keys(old).trusted == [po] and Keys(old).signer is old
    assert Keys(old, new, "trust-new").trusted == [po, pn] and Keys(old, new, "trust-new").signer is old
    assert Keys(old, new, "resign").trusted == [po, pn] and Keys(old, new, "resign").signer is new
    for phase in ("drop-old", "retire"):
        assert Keys(old, new, phase).trusted == [pn] and Keys(old, new, phase).signer is new
    assert Keys(old, new, "retire").finished().trusted == [pn]


def test_input_checks():
    assert check_key_name("cache.example.org") is None and check_key_name("snix-cache") is None
    for bad in ("", "a b", "a:b", "-x", "é"):
        assert check_key_name(bad)
    for good in ("http://h", "https://h:8443/x", "file:///srv/cache", "s3://bucket?region=eu-west-1"):
        assert check_cache_url(good) is None
    for bad in ("ftp://h", "h/x", "http://", "file://relative", "http://h x"):
        assert check_cache_url(bad)


def test_flake_block_edit_keeps_the_rest():
    block = render.flake_block("http://h", ["c-1:AAAA"])
    edited = render.edit_flake(FLAKE, "snix-cache", block)
    assert edited is not None and edited.count("\n") == FLAKE.count("\n") + 2
    assert '    extra-substituters = [ "http://h" ];\n' in edited and 'bash-prompt = "fleet> ";' in edited
    assert render.edit_flake(edited, "snix-cache", block) == edited
    assert render.edit_flake(FLAKE, "other-cache", block) is None
    assert render.edit_flake("{ }\n", "snix-cache", block) is None


@pytest.mark.parametrize("address", ["10.0.0.5", "fd00::5"])
def test_nginx_conf_is_private_and_valid(address, tmp_path):
    host = Host("snix", address)
    spec = CacheSpec("c", host, "http://x", 8080, str(tmp_path / "cache"))
    conf = render.nginx_conf(spec, host)
    assert "/etc/nginx" not in conf and f"root {tmp_path}/cache;" in conf
    assert ("listen [fd00::5]:8080;" if ":" in address else "listen 10.0.0.5:8080;") in conf
    # Parse it with the real nginx (paths rewritten into tmp_path: `-t` opens logs and the pid dir).
    local = (
        conf.replace("/var/log/", f"{tmp_path}/log/")
        .replace("/run/", f"{tmp_path}/")
        .replace("/var/lib/", f"{tmp_path}/lib/")
        .replace(f"listen {render.listen_address(host, 8080)}", "listen 127.0.0.1:1")
    )
    (tmp_path / "log/infratool-binary-cache/c").mkdir(parents=True)
    (tmp_path / "lib/infratool/binary-cache/c/nginx-tmp").mkdir(parents=True)
    f = write(tmp_path, "nginx.conf", local)
    res = subprocess.run(
        ["nginx", "-t", "-q", "-e", f"{tmp_path}/err.log", "-c", str(f)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def test_systemd_unit_passes_systemd_analyze(tmp_path):
    spec = CacheSpec("c", Host("snix", "10.0.0.5"), "http://10.0.0.5")
    unit = write(tmp_path, spec.unit, render.systemd_unit(spec, "/usr/sbin/nginx"))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (
        f"ExecStart=/usr/sbin/nginx -e /var/log/infratool-binary-cache/c/error.log -c {spec.nginx_conf}"
        in unit.read_text()
    )
