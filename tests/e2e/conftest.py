"""End-to-end tests: the fixtures (``cli``, ``fleet``, ``lab``) live in tests/conftest.py.

The helpers are re-exported here for the tests' ``from conftest import ...``.
"""

from helpers import PLAYBOOKS, ROOT, files_containing, sample_ps

__all__ = ["PLAYBOOKS", "ROOT", "files_containing", "sample_ps"]
