"""infratool: plan-first automation for a NixOS fleet.

Secrets rotation, remote-builder keys, binary-cache provisioning and Secure
Boot key handling, composed into playbooks that run over SSH (Fabric) against
the hosts in ``hosts.yaml``. Start with ``infratool --help``.
"""

__version__ = "0.1.0"
