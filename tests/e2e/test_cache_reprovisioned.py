"""Issue 13.16: a cache server that already holds paths signed by another key.

The signing key was lost (or replaced) and the cache directory kept: its
narinfos carry signatures by a key no client trusts — here a key with the
very same name, ``snix-cache-1``, as a fresh fleet repo generates. One run
must converge: whatever the server can vouch for (it holds the same path,
built there or signed by a key it trusts) is re-signed with the new key;
what it cannot vouch for is left alone and named, never laundered.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import PLAYBOOKS

from infratool.inventory import Host
from infratool.tasks.binary_cache import filetext as render
from infratool.tasks.binary_cache.spec import CacheSpec

PLAYBOOK = PLAYBOOKS / "binary-cache.yaml"
CACHE = "/var/lib/nixcache"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out.decode(errors="replace") if isinstance(out, bytes) else out
    return result


def build(lab, host: str, expr: str) -> str:
    argv = ["nix-build", "--no-out-link", "--option", "post-build-hook", "", "-E", expr]
    return ok(lab.exec(host, argv, timeout=120)).stdout.decode().strip()


def substitute(lab, client: str, path: str) -> subprocess.CompletedProcess[bytes]:
    """Fetch ``path`` on ``client`` into a store of its own, trusting what its nix.conf trusts."""
    root = f"/tmp/fetch-{os.urandom(4).hex()}"
    return lab.exec(
        client,
        f'XDG_CACHE_HOME={root}/c nix-store --store "local?root={root}/s" --realise {path}',
        timeout=120,
    )


def test_a_cache_signed_by_a_lost_key_converges_in_one_run(fleet, cli):
    lab, inv = fleet, fleet.inventory_path
    snix, brix = lab.host("snix"), lab.host("brix")
    spec = CacheSpec("snix-cache", Host("snix", snix.address), f"http://{snix.address}")
    nonce = os.urandom(4).hex()

    # The lost key, and what it signed: the probe and a path snix built itself ...
    ok(
        lab.exec(
            "snix",
            "mkdir -p /root/lost && nix-store --generate-binary-cache-key snix-cache-1 /root/lost/sk /root/lost/pk",
        )
    )
    probe = build(lab, "snix", render.probe_expr(spec, "x86_64-linux"))
    held = build(
        lab,
        "snix",
        f'derivation {{ name = "held-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo held > $out"]; }}',
    )
    ok(
        lab.exec(
            "snix",
            f"nix --extra-experimental-features nix-command copy --to 'file://{CACHE}?secret-key=/root/lost/sk' {probe} {held}",
        )
    )
    # ... and a path pushed from elsewhere, which snix's own store does not hold.
    foreign = build(
        lab,
        "brix",
        f'derivation {{ name = "foreign-{nonce}"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo foreign > $out"]; }}',
    )
    brix.path("/tmp/lost-sk").write_bytes(snix.path("/root/lost/sk").read_bytes())
    ok(
        lab.exec(
            "brix",
            f"nix --extra-experimental-features nix-command copy --to 'file:///tmp/seed?secret-key=/tmp/lost-sk' {foreign}",
        )
    )
    shutil.copytree(brix.path("/tmp/seed"), snix.path(CACHE), dirs_exist_ok=True)

    # One run: the new key signs what snix vouches for, and every client verifies.
    run = cli("-i", inv, "run", PLAYBOOK, "--yes")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert cli("-i", inv, "plan", PLAYBOOK, "--detailed-exitcode").returncode == 0

    for client in ("slax", "brix", "nixtv-player"):
        ok(substitute(lab, client, held))
    # The foreign path is not vouched for by the new key: no client takes it.
    refused = substitute(lab, "slax", foreign)
    assert refused.returncode != 0
    assert "left alone" in run.stdout + run.stderr and foreign in run.stdout + run.stderr
