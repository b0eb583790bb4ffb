"""``python -m livepatch``: the same as the ``livepatch`` command."""

import sys

from .cli import main

sys.exit(main())
