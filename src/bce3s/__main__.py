"""``python -m bce3s`` (also the entry point under ``torchrun -m bce3s``)."""

import sys

from bce3s.cli import main

sys.exit(main())
