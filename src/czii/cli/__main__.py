"""``python -m czii.cli``: the ``czii`` command (what torchrun starts: ``torchrun ... -m czii.cli train ...``)."""

import sys

from czii.cli import main

sys.exit(main())
