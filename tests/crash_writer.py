"""A writer for crash tests of the document store.

Usage: python crash_writer.py DATA_DIR COMPACT_EVERY [LIMIT]

Loads the store in DATA_DIR (repairing a torn log), then loops: puts the next
counter n into the map "counters", appends the change, and only once append()
has returned (the record is synced) prints n on its own line. Every
COMPACT_EVERY records it compacts. It stops after LIMIT counters (default: a
million), but is meant to be killed at a random point. Counters continue from
the highest one already stored, so it can be restarted on the same directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from amucrdt._automerge import Document
from amucrdt.storage import DocStore


def main(argv: list[str]) -> int:
    data_dir = Path(argv[1])
    compact_every = int(argv[2])
    limit = int(argv[3]) if len(argv) > 3 else 1_000_000

    store = DocStore(data_dir)
    doc, _ = store.load()
    if doc is None:
        doc = Document()
    # Everything loaded is stored already; changes from here on are appended.
    heads = doc.heads()
    counters = doc.get(["counters"])
    if counters is None:
        doc.put(["counters"], {})
        counters = {}
    assert isinstance(counters, dict)
    first = max((int(key) for key in counters), default=0) + 1

    for n in range(first, first + limit):
        doc.put(["counters", str(n)], n)
        doc.commit()
        store.append(doc.save_after(heads))
        heads = doc.heads()
        sys.stdout.write(f"{n}\n")
        sys.stdout.flush()
        if n % compact_every == 0:
            store.compact(doc.save())
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
