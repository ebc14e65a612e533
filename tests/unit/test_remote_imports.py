"""The SSH layer loads paramiko without invoke (issue 19: start-up CPU), and hides invoke from nothing else."""

from __future__ import annotations

import subprocess
import sys


def test_opening_connections_does_not_load_invoke_and_invoke_still_imports_after():
    code = (
        "import sys\n"
        "from infratool.remote.connect import paramiko_module\n"
        "p = paramiko_module()\n"
        "print(p.__name__, 'invoke' in sys.modules, 'fabric' in sys.modules)\n"
        "import invoke\n"
        "print('later import', invoke.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["paramiko False False", "later import invoke"]
