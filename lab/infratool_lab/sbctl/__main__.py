"""``python -m infratool_lab.sbctl``: run the emulator like the ``sbctl`` binary."""

import sys

from .cli import main

sys.exit(main())
