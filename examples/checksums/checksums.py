"""Make the checksum queue for a corpus, or check what the cluster wrote.

    python examples/checksums/checksums.py make --out /shared/sums
    python examples/checksums/checksums.py check --out /shared/sums

The work lives in the package (``amucrdt.checksums``), where ``amucrdt demo``
uses it too; ``python -m amucrdt.checksums`` is the same command.
"""

import sys

from amucrdt.checksums import main

if __name__ == "__main__":
    sys.exit(main())
