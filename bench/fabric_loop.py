"""The raw Fabric loop: the floor infratool is measured against.

What a careful user would write by hand with Fabric: a bounded thread pool,
one connection per host (pinned host keys from a known_hosts file, unknown
keys rejected), one shell script per host that checks every file and setting
and fixes only what differs. No plan, no diff, no report beyond a count.

Usage: ``python fabric_loop.py JOB.json`` (JSON written by ``spec.write_inputs``).
Exit status 1 if any host failed.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import paramiko
from fabric import Connection


def converge(address: str, job: dict) -> tuple[str, int, str]:
    """Connect to one host, run the job's script, return (host, exit status, output)."""
    conn = Connection(
        address,
        user=job["user"],
        connect_kwargs={"key_filename": [job["key"]], "look_for_keys": False, "allow_agent": False},
    )
    conn.client.load_host_keys(job["known_hosts"])
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        result = conn.run(job["script"], hide=True, warn=True)
        return address, result.exited, result.stdout
    except Exception as exc:  # report the host, keep going with the others
        return address, 255, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def main(path: str) -> int:
    """Run the job in ``path`` on every host; print a one-line summary."""
    with open(path) as fh:
        job = json.load(fh)
    with ThreadPoolExecutor(max_workers=job["forks"]) as pool:
        results = list(pool.map(lambda a: converge(a, job), job["hosts"]))
    failed = [(a, out) for a, status, out in results if status != 0]
    changed = sum(out.count("changed ") for _, status, out in results if status == 0)
    for address, out in failed:
        print(f"FAILED {address}: {out.strip()[:200]}", file=sys.stderr)
    print(f"{len(results)} hosts, {changed} changes, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
