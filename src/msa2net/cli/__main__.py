"""``python -m msa2net.cli``: the ``msa2net`` command (``torchrun -m msa2net.cli predict ...``)."""

import sys

from . import main

sys.exit(main())
