"""Issue 22.1: a builder client must not get forged content signed by the fleet's cache.

The attack, on the lab as in the issue: root on slax uses its builder key to
import a forged store path, under the name of a genuine one, into snix's store
(a trusted Nix client needs no signature for that). A build on snix then uses
it, and the cache's post-build hook (or ``binary_cache.push``) would sign the
forgery with the cache key for every host to substitute. The cache must sign
only what snix itself built or what a trusted key already signed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

from conftest import PLAYBOOKS
from helpers import ok

CACHE = "/var/lib/nixcache"
REFUSED_LOG = "/var/log/infratool-binary-cache/snix-cache/refused.log"


def drv(name: str, script: str) -> str:
    return (
        f'derivation {{ name = "{name}"; system = "x86_64-linux"; builder = "/bin/sh"; '
        f'args = [ "-c" "{script}" ]; }}'
    )


def narinfo(lab, path: str) -> Path:
    return lab.host("snix").path(f"{CACHE}/{path.split('/')[-1].split('-')[0]}.narinfo")


def substitute(lab, client: str, path: str) -> subprocess.CompletedProcess[bytes]:
    """Fetch ``path`` from the cache on ``client`` into a store of its own, with its own trusted keys."""
    root = f"/tmp/victim-{os.urandom(4).hex()}"
    return lab.exec(
        client,
        f'XDG_CACHE_HOME={root}/c nix-store --store "local?root={root}/s" --realise {path} '
        f"&& cat {root}/s{path}",
        timeout=120,
    )


def forge_into_builder(lab, genuine: str) -> str:
    """On slax, with nothing but its builder key: import a forgery of ``genuine`` into snix's store.

    The store URI and key are read from slax's own /etc/nix/machines, exactly
    what the remote-builders playbook installed there.
    """
    machines = lab.host("slax").path("/etc/nix/machines").read_text()
    line = next(ln for ln in machines.splitlines() if ln.startswith("ssh"))
    uri, _systems, key = line.split()[:3]
    built = ok(
        lab.exec("slax", ["nix-build", "--no-out-link", "--max-jobs", "1", "--builders", "", "-E", genuine])
    )
    path = built.stdout.decode().strip()
    store = shlex.quote(f"{uri}?ssh-key={key}")
    imported = lab.exec(
        "slax",
        f"nix-store --export {path} | sed 's/GENUINE/FORGED!/' | nix-store --store {store} --import",
        timeout=120,
    )
    # Either the builder refuses the import outright, or it holds the forgery
    # (a trusted client may import unsigned paths): the cache must cope with both.
    if imported.returncode == 0:
        assert lab.host("snix").path(path).read_text() == "FORGED!\n"
    return path


def test_a_forged_path_imported_by_a_builder_client_is_never_signed(fleet, cli, tmp_path):
    lab, inv = fleet, fleet.inventory_path
    ok(cli("-i", inv, "run", PLAYBOOKS / "remote-builders.yaml", "--yes"))
    ok(cli("-i", inv, "run", PLAYBOOKS / "binary-cache.yaml", "--yes"))
    nonce = os.urandom(4).hex()
    genuine = drv(f"genuine-{nonce}", "echo GENUINE > $out")
    forged = forge_into_builder(lab, genuine)

    # snix builds two things from the forgery: one refers to it, one only copies its content.
    refers = drv(f"refers-{nonce}", f"read x < ${{{genuine}}}; echo $x ${{{genuine}}} > $out")
    copies = drv(f"copies-{nonce}", f"read x < ${{{genuine}}}; echo $x > $out")
    outs = []
    for expr in (refers, copies):
        built = ok(lab.exec("snix", ["nix-build", "--no-out-link", "-E", expr], timeout=120))
        outs.append(built.stdout.decode().strip())
        assert "REFUSED to sign" in built.stderr.decode(), built.stderr.decode()
    for path in (forged, *outs):
        assert not narinfo(lab, path).exists(), f"{path} was signed into the cache"
    log = lab.host("snix").path(REFUSED_LOG).read_text()
    assert all(p in log for p in outs) and forged in log

    # binary_cache.push refuses the same paths, names them, and signs nothing.
    pb = tmp_path / "push.yaml"
    pb.write_text(
        "tasks:\n  - task: binary_cache.push\n"
        f"    with: {{server: snix, name: snix-cache, paths: {json.dumps([outs[0], forged])}}}\n"
    )
    pushed = cli("-i", inv, "run", pb, "--yes")
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert "REFUSED to sign" in pushed.stdout + pushed.stderr and forged in pushed.stdout + pushed.stderr
    for path in (forged, *outs):
        assert not narinfo(lab, path).exists(), f"{path} was pushed into the cache"

    # The other hosts cannot get the forgery from the cache.
    for path in (forged, *outs):
        fetched = substitute(lab, "brix", path)
        assert fetched.returncode != 0 and b"FORGED" not in fetched.stdout

    # What snix built from genuine inputs is still pushed and substituted.
    fine = ok(
        lab.exec("snix", ["nix-build", "--no-out-link", "-E", drv(f"fine-{nonce}", "echo FINE > $out")])
    )
    path = fine.stdout.decode().strip()
    assert narinfo(lab, path).exists()
    assert ok(substitute(lab, "nixtv-player", path)).stdout.decode().endswith("FINE\n")
