"""``python -m czii``: the ``czii`` command (what torchrun starts: ``torchrun ... -m czii train ...``)."""

import sys

from czii.cli import main

sys.exit(main())
