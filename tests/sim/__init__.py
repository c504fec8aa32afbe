"""A deterministic simulator of an amucrdt cluster, for tests and benchmarks.

Test modules import it as ``sim`` (pytest puts ``tests/`` on the path); a
script run from the repository root can import it as ``tests.sim``.
"""

from .harness import (
    CHAOS,
    CRASH,
    FAULT_FREE,
    PARTITION,
    Profile,
    Run,
    Sim,
    SimResult,
    Workload,
)

__all__ = [
    "CHAOS",
    "CRASH",
    "FAULT_FREE",
    "PARTITION",
    "Profile",
    "Run",
    "Sim",
    "SimResult",
    "Workload",
]
