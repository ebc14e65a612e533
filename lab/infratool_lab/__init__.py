"""The lab: a real fleet of sshd hosts on one machine, for tests, demos and benchmarks.

``Lab(root).up()`` starts the four fleet hosts (or N for scale tests) as real
sshd processes, each in its own mount namespace with private ``/etc/ssh``,
``/root``, ``/etc/nix``, ``/nix``, ``/var/lib``, ... on its own loopback
address, and writes an inventory with their pinned host keys. See
:mod:`infratool_lab.fleet`.
"""

from infratool_lab.errors import AddressInUseError, LabError, LabUnavailable
from infratool_lab.fleet import HostStatus, Lab, LabHost
from infratool_lab.layout import FLEET

__all__ = [
    "FLEET",
    "AddressInUseError",
    "HostStatus",
    "Lab",
    "LabError",
    "LabHost",
    "LabUnavailable",
]
