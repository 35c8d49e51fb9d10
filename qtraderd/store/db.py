"""Opening the SQLite store: WAL mode, migrations, and clear errors about the state dir.

One writer connection (the recorder's, or a short-lived CLI command's); read-only
connections everywhere else. Connections use autocommit (`isolation_level=None`) and
explicit transactions so batching is visible in the code that batches.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

from qtraderd.store.schema import SchemaError, migrate

DB_NAME = "qtraderd.db"


class StoreError(RuntimeError):
    """The state directory or database cannot be used; the message says why and where."""


def db_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / DB_NAME


def _prepare_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {state_dir}: {exc.strerror}") from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StoreError(
            f"state directory {state_dir} is not writable by this user "
            f"(uid {os.getuid()}); fix its permissions or pass another --state-dir"
        )


def connect(state_dir: str | Path, *, readonly: bool = False, timeout_s: float = 5.0
            ) -> sqlite3.Connection:
    """Open the store. Read-write opens create and migrate it; read-only opens never write."""
    state_dir = Path(state_dir)
    path = db_path(state_dir)
    if readonly:
        if not path.exists():
            raise StoreError(f"no store at {path} (run `qtraderd import` or `qtraderd run` first)")
        try:
            return _open_ro(f"file:{path}?mode=ro", timeout_s)
        except sqlite3.DatabaseError as exc:
            if not os.access(state_dir, os.W_OK):
                # WAL readers need to create the -shm file; on read-only media (an archived
                # state dir, a read-only mount) open the file as immutable instead.
                try:
                    return _open_ro(f"file:{path}?mode=ro&immutable=1", timeout_s)
                except sqlite3.DatabaseError:
                    pass
            raise StoreError(f"cannot read store {path}: {exc}") from exc
    _prepare_dir(state_dir)
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"store {path} is read-only for this user; fix its permissions")
    try:
        conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None,
                               check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"store {path}: could not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        migrate(conn)
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "readonly" in msg or "read-only" in msg:
            raise StoreError(f"store {path} is read-only: {msg}") from exc
        raise store_error(path, exc) from exc
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"store {path} is not a usable SQLite database: {exc}; move it "
                             "away or pass another --state-dir") from exc
        raise store_error(path, exc) from exc
    except SchemaError as exc:
        raise StoreError(str(exc)) from exc
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES):
            raise StoreError(f"store {path} is not writable: {exc.strerror}") from exc
        raise
    return conn


def store_error(path: str | Path, exc: sqlite3.Error) -> StoreError:
    """An SQLite error met while using the store, as a StoreError saying what to do."""
    msg = str(exc)
    if "locked" in msg or "busy" in msg:
        return StoreError(
            f"store {path} is locked by another process ({msg}): another qtraderd, a "
            f"`qtraderd import` or an sqlite3 shell holding a transaction on it; stop that "
            f"process (or wait for it to finish) and start again")
    if isinstance(exc, sqlite3.OperationalError) and "readonly" not in msg \
            and "malformed" not in msg and "disk image" not in msg:
        return StoreError(f"cannot use store {path}: {msg}")
    return StoreError(
        f"store {path} is damaged ({msg}): stop every process using it, keep a copy, then "
        f"recover it (`sqlite3 {path} .recover | sqlite3 recovered.db`, then move "
        f"recovered.db in its place) or start from a new --state-dir and re-import the "
        f"candles with `qtraderd import`")


def check_store(conn: sqlite3.Connection, path: str | Path, budget_s: float = 2.0) -> None:
    """At daemon start: the store is writable now and its pages are sound, or StoreError.

    Without this, a store locked by another process or with damaged pages surfaced as a
    raw SQLite traceback from whichever start-up step touched it first. The page check
    (`PRAGMA quick_check`) reads the whole file, so it runs under a time budget: a store
    too big to check within it is checked as far as the budget goes (the start is never
    held up by more than `budget_s`).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")  # waits the busy timeout for a writer, then fails
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise store_error(path, exc) from exc
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(2)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            return  # out of budget: the pages read so far were fine
        raise store_error(path, exc) from exc
    except sqlite3.DatabaseError as exc:
        raise store_error(path, exc) from exc
    finally:
        conn.set_progress_handler(None, 0)
    problems = " ".join(" ".join(str(r[0]).split()) for r in rows if r[0] != "ok")
    if problems:  # one line: "*** in database main *** Page 302: btreeInitPage() ..."
        raise store_error(path, sqlite3.DatabaseError(
            f"database disk image is malformed: {problems[:200]}"))


def _open_ro(uri: str, timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


class Transaction:
    """`with Transaction(conn):` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
