"""A node's data directory: identity, cluster secret, lock and logs.

Layout of a data directory (mode 0700)::

    secret        the cluster secret, 64 hex characters and a newline (0600)
    node.json     {"node_id": 32 hex characters, "created": unix time}
    lock          holds the pid of the node using the directory (flock)
    logs/         one output log per job run
    doc.snapshot  the document store (see :mod:`amucrdt.storage`)
    doc.log

``secret`` and ``node.json`` are written once by :meth:`DataDir.init` and never
overwritten: a node's id is its identity in the shared document, and a secret
replaced under a running cluster would lock the node out of it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import sys
import time
from pathlib import Path

from amucrdt.errors import StorageError

__all__ = ["DEFAULT_DATA_DIR", "DataDir", "default_data_dir", "read_secret_file"]

log = logging.getLogger(__name__)

SECRET_FILE = "secret"
NODE_FILE = "node.json"
LOCK_FILE = "lock"
LOGS_DIR = "logs"

#: Length of a secret made by ``init``, in bytes.
SECRET_BYTES = 32
#: Shortest secret accepted from a file, in bytes after hex decoding.
MIN_SECRET_BYTES = 16


def default_data_dir() -> Path:
    """The data directory used when none is given.

    ``$AMUCRDT_DATA_DIR`` if set, else ``$XDG_DATA_HOME/amucrdt``, else
    ``~/.local/share/amucrdt``.
    """
    explicit = os.environ.get("AMUCRDT_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "amucrdt"
    return Path.home() / ".local" / "share" / "amucrdt"


DEFAULT_DATA_DIR: Path = default_data_dir()


class DataDir:
    """An initialised data directory.

    Build one with :meth:`init` (creates what is missing) or :meth:`open`
    (requires an initialised directory).
    """

    def __init__(self, path: Path, node_id: str) -> None:
        self.path = path
        self._node_id = node_id
        # File descriptor of the held lock file; None until lock() succeeds.
        self._lock_fd: int | None = None

    @classmethod
    def init(cls, path: Path, secret: bytes | None = None) -> DataDir:
        """Create the data directory at ``path`` unless it already exists.

        Makes the directory (mode 0700, parents as needed), a ``secret`` file
        (``secret`` or 32 random bytes, as hex, mode 0600) and ``node.json``
        with a random node id. Files that already exist are left as they are,
        so running ``init`` twice is harmless.

        Raises:
            StorageError: a file cannot be created or read, ``secret`` is
                shorter than 16 bytes, or ``secret`` is given and differs from
                the one the directory already holds.
        """
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise StorageError(
                f"cluster secret must be at least {MIN_SECRET_BYTES} bytes, "
                f"got {len(secret)}"
            )
        try:
            existed = path.is_dir()
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not existed:
                # mkdir's mode is filtered by the umask; the secret lives here.
                os.chmod(path, 0o700)
        except OSError as exc:
            raise StorageError(
                f"cannot create data directory {path}: {exc.strerror}"
            ) from exc

        chosen = secret if secret is not None else secrets.token_bytes(SECRET_BYTES)
        secret_path = path / SECRET_FILE
        if _create_once(secret_path, (chosen.hex() + "\n").encode("ascii")):
            log.info("created cluster secret %s", secret_path)
        elif secret is not None and _parse_secret_file(secret_path) != secret:
            raise StorageError(
                f"data directory {path} already holds a different cluster "
                f"secret in {secret_path}; it is never overwritten"
            )

        node_doc = {"node_id": secrets.token_hex(16), "created": int(time.time())}
        node_bytes = (json.dumps(node_doc, indent=2) + "\n").encode("utf-8")
        if _create_once(path / NODE_FILE, node_bytes):
            log.info("created node %s in %s", node_doc["node_id"], path)
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> DataDir:
        """Open the initialised data directory at ``path``.

        Raises:
            StorageError: ``path`` is not a directory, lacks ``secret`` or
                ``node.json``, or ``node.json`` is malformed. The message says
                how to initialise the directory.
        """
        hint = f"run `amucrdt init --data-dir {path}`"
        if not path.is_dir():
            raise StorageError(f"data directory {path} does not exist; {hint}")
        for name in (SECRET_FILE, NODE_FILE):
            if not (path / name).is_file():
                raise StorageError(
                    f"data directory {path} is not initialised (no {name}); {hint}"
                )
        return cls(path, _read_node_id(path / NODE_FILE))

    @property
    def node_id(self) -> str:
        """This node's id: 32 lowercase hex characters, fixed at ``init``."""
        return self._node_id

    def secret(self) -> bytes:
        """The cluster secret, decoded from the hex text of ``secret``.

        Logs a warning when the file is readable or writable by group or
        others.

        Raises:
            StorageError: the file is missing, unreadable, empty, not hex, or
                shorter than 16 bytes.
        """
        return _parse_secret_file(self.path / SECRET_FILE)

    @property
    def logs_dir(self) -> Path:
        """The directory of job output logs, created on first use.

        Raises:
            StorageError: the directory cannot be created.
        """
        logs = self.path / LOGS_DIR
        try:
            logs.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {logs}: {exc.strerror}") from exc
        return logs

    def lock(self) -> None:
        """Take the exclusive lock of the directory for this process.

        The lock is a ``flock`` on ``lock``, held until :meth:`unlock` or the
        process exits (the kernel drops it then, even after SIGKILL). The
        holder's pid is written into the file so a refused node can name it.
        Calling ``lock`` again while holding it does nothing.

        Raises:
            StorageError: another process (or another ``DataDir`` of this
                process) holds the lock, or the file cannot be opened.
        """
        if self._lock_fd is not None:
            return
        lock_path = self.path / LOCK_FILE
        try:
            # os.open makes descriptors non-inheritable, so job processes
            # started by the node never keep the lock alive after it exits.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(f"cannot lock {lock_path}: {exc.strerror}") from exc
            raise StorageError(
                f"data directory {self.path} is in use by another node "
                f"(pid {_read_pid(lock_path)})"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot write {lock_path}: {exc.strerror}") from exc
        self._lock_fd = fd
        log.info("locked data directory %s (pid %d)", self.path, os.getpid())

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock`; does nothing if not held."""
        if self._lock_fd is None:
            return
        os.close(self._lock_fd)
        self._lock_fd = None


def read_secret_file(path: Path) -> bytes:
    """Read a cluster secret from ``path`` (the ``--secret-file`` option).

    The file holds the secret as hex text; surrounding whitespace is ignored.
    Logs a warning when the file is readable or writable by group or others.

    Raises:
        StorageError: naming ``path``, when the file is missing, unreadable,
            empty, not hex, or shorter than 16 bytes once decoded.
    """
    return _parse_secret_file(path)


def _parse_secret_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except OSError as exc:
        raise StorageError(f"cannot read secret file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "secret file %s has mode %04o; it should be 0600",
            path,
            stat.S_IMODE(mode),
        )
    # Error messages below never quote the file's content: it is the secret.
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise StorageError(f"secret file {path} is not hex text") from None
    if not text:
        raise StorageError(f"secret file {path} is empty")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise StorageError(f"secret file {path} is not hex text") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise StorageError(
            f"secret file {path} holds {len(secret)} bytes; "
            f"at least {MIN_SECRET_BYTES} are required"
        )
    return secret


def _read_node_id(path: Path) -> str:
    try:
        node = json.loads(path.read_bytes())
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise StorageError(f"{path} is not valid JSON: {exc}") from exc
    node_id = node.get("node_id") if isinstance(node, dict) else None
    if not isinstance(node_id, str) or not _is_node_id(node_id):
        raise StorageError(f"{path} has no valid node_id (32 hex characters)")
    return node_id


def _is_node_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _read_pid(lock_path: Path) -> str:
    # The holder may be between truncating and writing its pid.
    try:
        text = lock_path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _create_once(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` (mode 0600) unless it exists.

    The data is written and synced under a temporary name (created with
    O_EXCL) and then hard-linked into place, so a crash never leaves a
    half-written file at ``path`` and an existing file is never replaced.
    Returns False when ``path`` already existed.

    Raises:
        StorageError: the file cannot be written.
    """
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                write_all(fd, data)
                sync_file(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)
        sync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}") from exc
    return True


# Durable file helpers, shared with the document store.


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``; raises OSError on failure."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def sync_file(fd: int) -> None:
    """Flush ``fd``'s data to stable storage; raises OSError on failure."""
    if sys.platform == "darwin":
        # fsync on macOS only reaches the drive's cache; this reaches the disk.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def sync_dir(path: Path) -> None:
    """Make renames and new names in ``path`` durable; raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
