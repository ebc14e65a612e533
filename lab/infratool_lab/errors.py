"""Errors the lab raises, as branches of infratool's one exception tree.

    InfratoolError
    └── LabError                 the lab could not do what was asked
        ├── LabUnavailable       this machine cannot run a lab (not root, no sshd, ...)
        └── AddressInUseError    a host's address:22 is taken by something else

Bad arguments (a host count out of range, a malformed subnet) are
:class:`infratool.errors.InputError`, so the CLI exits 3 for them like for any
other bad input.
"""

from __future__ import annotations

from infratool.errors import InfratoolError


class LabError(InfratoolError):
    """The lab could not start, stop or reach one of its hosts."""


class LabUnavailable(LabError):
    """This machine cannot run a lab; the message says what is missing.

    Test fixtures turn this into a skip rather than a failure.
    """


class AddressInUseError(LabError):
    """A lab host's ``address:22`` is already taken (another lab, or an sshd on 0.0.0.0)."""

    def __init__(self, address: str, detail: str = "") -> None:
        self.address = address
        hint = (
            f"{address}:22 is already in use"
            + (f" ({detail})" if detail else "")
            + "; stop whatever listens there (another lab? an sshd on 0.0.0.0:22?)"
            " or pick another subnet"
        )
        super().__init__(hint)
