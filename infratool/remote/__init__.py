"""SSH to the hosts: the only package that imports Fabric or paramiko.

One :class:`Remote` per host, opened once and reused for the whole run. The
package is split along its seams; import from here:

- :mod:`.connection`: :class:`Remote` (commands, held commands, file writes), :class:`Result`;
- :mod:`.held`: :class:`Held`, a command left running (the run lock), and :func:`release_all`;
- :mod:`.deadline`: :func:`with_deadline`, the host killing a command that runs out of time;
- :mod:`.connect`: opening a connection (pinned host keys, TCP_NODELAY, errors in words);
- :mod:`.hostkeys`: fingerprints, the key a host offers, the policy refusing unknown keys;
- :mod:`.writes`: the put-files protocol (the script, its payload, streamed content).

Strict host keys: a host presenting an unknown or changed key is refused
during the key exchange, before authentication, before any command. Secrets
reach remote processes only through stdin, never argv or environment.
"""

from infratool.remote.connection import Remote, Result
from infratool.remote.deadline import with_deadline
from infratool.remote.held import Held, release_all
from infratool.remote.hostkeys import fingerprint, offered_host_key
from infratool.remote.writes import (
    FileWrite,
    PartialWrite,
    StreamedContent,
    expected_state,
    owner_spec,
    payload_sizes,
    put_files_script,
    set_meta_script,
)

__all__ = [
    "FileWrite",
    "Held",
    "PartialWrite",
    "Remote",
    "Result",
    "StreamedContent",
    "expected_state",
    "fingerprint",
    "offered_host_key",
    "owner_spec",
    "payload_sizes",
    "put_files_script",
    "release_all",
    "set_meta_script",
    "with_deadline",
]
