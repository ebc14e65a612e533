"""Notifications for the operator: a command fed the message, and/or an HTTP POST (ntfy).

Called when a rotation fails, when secrets come due (``secrets status
--notify``) and when a consumer rejects its current value (``secrets check``,
event ``drift``). A notification that cannot be sent is logged, never fatal: the
failure it reports is already in the exit code and the audit log.
"""

from __future__ import annotations

import subprocess
import urllib.request

from infratool import log
from infratool.localenv import minimal_env
from infratool.rotation.policy import Policy
from infratool.secrets.secret import REDACTOR


def notify(policy: Policy, event: str, message: str) -> None:
    """Tell the policy's notify command/URL about ``event`` (failure|due|drift); never raises."""
    target = policy.notify
    if target is None or event not in target.events:
        return
    text = REDACTOR.redact(f"infratool: {message}") + "\n"
    logger = log.get_logger("infratool.rotation.notify")
    if target.command:
        try:
            subprocess.run(
                ["/bin/sh", "-c", target.command],
                input=text.encode(),
                env=minimal_env(),  # never the operator's SOPS_AGE_KEY or tokens
                timeout=30,
                capture_output=True,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("notify command failed", error=str(exc))
    if target.url:
        try:
            req = urllib.request.Request(
                target.url, data=text.encode(), method="POST", headers={"Title": f"infratool {event}"}
            )
            urllib.request.urlopen(req, timeout=10).close()
        except OSError as exc:
            logger.warning("notify URL failed", error=str(exc))
