"""Helpers every task family uses; no task is registered here.

- :mod:`.checks`: parameter checks (absolute paths, modes, user names);
- :mod:`.files`: the changes that make a host file hold given content
  (:func:`~.files.file_changes`), what a plan may show of a file, and the
  ``files.*`` actions those changes name;
- :mod:`.source`: file content rendered from a local file (templates, verbatim
  copies) in chunks, hashed rather than held;
- :mod:`.local`: generated files in the flake repo (``local.write``);
- :mod:`.nixconf`: ``key = value`` lines of nix.conf.

The registered tasks stay in their families (``tasks/files.py``,
``tasks/nix_settings.py``, ``tasks/binary_cache/`` ...).
"""
