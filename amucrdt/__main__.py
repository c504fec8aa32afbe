"""``python -m amucrdt`` runs the command line."""

import sys

from amucrdt.cli import main

sys.exit(main())
