"""The one exception family of amucrdt.

Every error the package raises on purpose derives from :class:`AmucrdtError`,
so a caller (the CLI above all) can catch the family and print one clear line.
Messages name what went wrong and where: the file and line, the peer, the job.
"""

from __future__ import annotations


class AmucrdtError(Exception):
    """Base class of every error amucrdt raises on purpose."""


class AutomergeError(AmucrdtError):
    """The Automerge binding refused bytes or an operation.

    Raised by :mod:`amucrdt._automerge` for malformed documents, changes or sync
    messages, bad paths, and for internal panics of the Automerge crate, which
    the binding catches and reports here with the operation's name.
    """


class SchemaError(AmucrdtError):
    """A document uses a schema version this node does not understand."""


class FormatError(AmucrdtError):
    """A queue file or hosts file is malformed.

    Attributes:
        path: the file, as given by the user ("-" for standard input).
        line: 1-based line of the fault, or None when it has no single line.
        column: 1-based column of the fault, or None.
    """

    def __init__(
        self,
        path: str,
        message: str,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.reason = message
        where = path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class StorageError(AmucrdtError):
    """A data directory or a file in it cannot be read or written safely."""


class ProtocolError(AmucrdtError):
    """A peer sent a frame that breaks the wire protocol."""


class AuthError(AmucrdtError):
    """A peer or client failed to prove that it holds the cluster secret."""


class ClientError(AmucrdtError):
    """A CLI request to a node failed: unreachable, refused, or rejected."""
