"""Test-only tasks, registered in every infratool process started with this directory on PYTHONPATH.

* ``test.keypair`` generates an ed25519 key pair **at plan time** and installs
  it (private key 0600, public key 0644) with the real ``files.put`` action:
  what a saved plan shows (the public key) must be what gets installed.
* ``test.explode`` raises a plain ``ValueError`` while planning the hosts
  named in ``hosts``: that must fail those hosts only, never the run.

Nothing in infratool knows about this module; the tests set ``PYTHONPATH``.
"""

from __future__ import annotations

import os

if os.environ.get("INFRATOOL_TEST_PLUGINS"):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from infratool.changes import Change
    from infratool.facts import FactRequest
    from infratool.secrets.secret import Secret
    from infratool.tasks.base import HostTask, Param, register

    @register
    class Keypair(HostTask):
        """Generate a key pair at plan time; install it unless the public key file exists."""

        name = "test.keypair"
        summary = "test only: a key pair generated while planning"
        host_local = True
        params = {"path": Param(str, required=True)}

        def fact_requests(self, host):
            return [FactRequest("file", self.args["path"] + ".pub")]

        def plan_host(self, host, ctx):
            path = self.args["path"]
            if host.file(path + ".pub").exists:
                return []
            key = Ed25519PrivateKey.generate()
            private = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            public = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            put = {"mode": None, "owner": None, "group": None, "expect": None}
            return [
                Change(
                    host.name,
                    self.name,
                    f"install private key {path}",
                    op="files.put",
                    args={**put, "path": path, "content": Secret(private), "mode": 0o600},
                    action="create",
                ),
                Change(
                    host.name,
                    self.name,
                    f"install public key {public.decode()}",
                    op="files.put",
                    args={**put, "path": path + ".pub", "content": public + b"\n", "mode": 0o644},
                    action="create",
                ),
            ]

    @register
    class Explode(HostTask):
        """Raise a ValueError while planning the named hosts."""

        name = "test.explode"
        summary = "test only: planning raises ValueError on some hosts"
        params = {"hosts": Param(list, required=True, items=str)}

        def plan_host(self, host, ctx):
            if host.name in self.args["hosts"]:
                raise ValueError(f"planted bug on {host.name}")
            return []
