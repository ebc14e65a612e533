"""NixOS deploys: build, copy, activate under a watchdog on the host, confirm, commit or roll back.

:mod:`.plan` decides which hosts a run deploys (one change per host);
:mod:`.build` runs Nix on the controller (build the systems, copy a
closure); :mod:`.engine` drives a deploy (activate, confirm, commit or roll
back); :mod:`.hostside` holds the POSIX sh that runs on the host (the
watchdog). The runner applies
a deploy change like any host change, then calls
:func:`~infratool.deploy.engine.confirm_deploy` with the verify steps of the
tasks that changed that host.
"""

from infratool.deploy.engine import DEFAULT_CONFIRM_TIMEOUT, OP, DeployFailed, confirm_deploy
from infratool.deploy.plan import clear_pending, deploy_changes, mark_pending

__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT",
    "OP",
    "DeployFailed",
    "clear_pending",
    "confirm_deploy",
    "deploy_changes",
    "mark_pending",
]
