"""The review queue: frames the teacher is unsure about, waiting for a person (or the simulated annotator).

Why SQLite: it is the embedded default the issue asks for, it ships with Python, and with the right settings
it is a correct multi-process work queue on one machine:

* WAL journal, so readers never block the one writer and a crash never leaves a half-written page;
* a busy timeout, so a writer that finds the database locked waits instead of failing;
* ``BEGIN IMMEDIATE`` around every read-modify-write (claim, complete, skip, release), so two reviewers can
  never both see an item as ``pending`` and both take it: the write lock is taken before the read.

Items are keyed by ``(strategy, round, sample_token)`` (a UNIQUE constraint), so re-enqueueing a frame in the
same round is a no-op and a killed round can simply enqueue again. Status moves
``pending -> in_review -> done`` (or ``skipped``); ``release`` / ``release_stale`` move an ``in_review`` item
of a reviewer that gave up or crashed back to ``pending``. Timestamps are ISO-8601 UTC strings.

A person reviews through a standard labelling-tool file: ``export_scalabel`` writes the queue in the Scalabel
format (the BDD100K / Scalabel tool's JSON: ``{"frames": [...], "config": {...}}``) with the teacher's boxes as
pre-labels, and ``import_scalabel`` reads an edited file back, validates every field and marks the frames done.
The file format and its box convention: ``scalabel.py``.
"""
from __future__ import annotations

import math
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .errors import LabellingError
from .records import LabelBox
from .scalabel import FrameIndex, atomic_write_json, read_scalabel, scalabel_document, scalabel_frame

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("pending", "in_review", "done", "skipped")
DEFAULT_BUSY_TIMEOUT_S = 60.0

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    strategy TEXT NOT NULL,
    round INTEGER NOT NULL,
    sample_token TEXT NOT NULL,
    scene_token TEXT NOT NULL,
    reason TEXT NOT NULL,
    score REAL NOT NULL,
    status TEXT NOT NULL CHECK(status IN ('pending', 'in_review', 'done', 'skipped')),
    reviewer TEXT,
    boxes INTEGER,
    cost REAL,
    note TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE(strategy, round, sample_token)
);
CREATE INDEX IF NOT EXISTS items_by_queue ON items(strategy, round, status, score);
"""
# Future schema changes: add ``{from_version: sql}`` here; ``_init_schema`` applies them in order.
_MIGRATIONS: dict[int, str] = {}

_COLUMNS = ("id", "strategy", "round", "sample_token", "scene_token", "reason", "score", "status", "reviewer",
            "boxes", "cost", "note", "created_at", "updated_at")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    """Fixed-width ISO UTC, so the strings sort (and compare in SQL) like the times."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class QueueRequest:
    """One frame to put in the queue: why (``reason``, e.g. the trigger) and how urgent (``score``, higher first)."""

    sample_token: str
    scene_token: str
    reason: str
    score: float


@dataclass(frozen=True)
class QueueItem:
    """One row of the queue."""

    id: int
    strategy: str
    round: int
    sample_token: str
    scene_token: str
    reason: str
    score: float
    status: str
    reviewer: Optional[str]
    boxes: Optional[int]
    cost: Optional[float]
    note: Optional[str]  # why it was skipped / released, if it was
    created_at: str
    updated_at: str


def _check_queue_key(strategy: Any, round: Any) -> None:
    if not isinstance(strategy, str) or not strategy:
        raise LabellingError(f"queue strategy must be a non-empty string, got {strategy!r}")
    if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
        raise LabellingError(f"queue round must be an integer >= 0, got {round!r}")


def _check_status(status: Optional[str]) -> None:
    if status is not None and status not in STATUSES:
        raise LabellingError(f"queue status must be one of {STATUSES}, got {status!r}")


class ReviewQueue:
    """A SQLite review queue at ``path`` (created if missing). Safe to open from several processes at once.

    Each process (or thread) opens its own ``ReviewQueue``; a connection is not shared across processes.
    """

    def __init__(self, path: str, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self.busy_timeout_s = float(busy_timeout_s)
        if os.path.isdir(self.path):
            raise LabellingError(f"review queue path {self.path} is a directory, not a database file")
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            # isolation_level=None: no implicit transactions; every write below is an explicit BEGIN IMMEDIATE.
            self._conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise LabellingError(f"cannot open review queue {self.path}: {e}") from e
        self._conn.row_factory = sqlite3.Row
        try:
            self._retry_locked(self._init_schema)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise LabellingError(f"review queue {self.path} is not a usable SQLite database: {e}") from e
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ connection / schema
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ReviewQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _retry_locked(self, fn, *args):
        """Run ``fn``, retrying while the database is locked (only needed where SQLite skips the busy handler,
        e.g. switching the journal mode while another process opens the same fresh file)."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise LabellingError(f"review queue {self.path} stayed locked for {self.busy_timeout_s:.0f} s"
                                         ) from e
                time.sleep(0.05)

    def _init_schema(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LabellingError(f"review queue {self.path}: could not switch to WAL journal (got {mode!r})")
        c.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses at most the last commit
        with self._write():
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                for stmt in _SCHEMA_V1.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
                return
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise LabellingError(f"review queue {self.path} has schema version {version}, newer than this "
                                     f"code's {SCHEMA_VERSION}; upgrade drive to open it")
            while version < SCHEMA_VERSION:
                if version not in _MIGRATIONS:
                    raise LabellingError(f"review queue {self.path}: no migration from schema version {version}")
                for stmt in _MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                version += 1
            c.execute("UPDATE schema_version SET version = ?", (version,))

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            elif self.conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                self.conn.execute("ROLLBACK")

    def _write(self) -> "ReviewQueue._Tx":
        """A write transaction that takes the write lock up front (``BEGIN IMMEDIATE``)."""
        return ReviewQueue._Tx(self._conn)

    @staticmethod
    def _item(row: sqlite3.Row) -> QueueItem:
        return QueueItem(**{k: row[k] for k in _COLUMNS})

    def _get(self, item_id: int) -> QueueItem:
        row = self._conn.execute("SELECT * FROM items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise LabellingError(f"review queue {self.path}: no item with id {item_id}")
        return self._item(row)

    # ------------------------------------------------------------------ queue operations
    def enqueue(self, strategy: str, round: int, items: Iterable[QueueRequest]) -> int:
        """Add frames as ``pending``; returns how many were new (a frame already queued for this strategy and
        round is left untouched, whatever its status)."""
        _check_queue_key(strategy, round)
        rows = []
        for i, it in enumerate(items):
            where = f"enqueue items[{i}]"
            if not isinstance(it, QueueRequest):
                raise LabellingError(f"{where}: expected a QueueRequest, got {type(it).__name__}")
            for name in ("sample_token", "scene_token"):
                v = getattr(it, name)
                if not isinstance(v, str) or not v:
                    raise LabellingError(f"{where}.{name}: must be a non-empty string, got {v!r}")
            if not isinstance(it.reason, str):
                raise LabellingError(f"{where}.reason: must be a string, got {it.reason!r}")
            try:
                score = float(it.score)
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                raise LabellingError(f"{where}.score: must be a finite number, got {it.score!r}")
            rows.append((it.sample_token, it.scene_token, it.reason, score))
        if not rows:
            return 0
        now = _iso(_now())
        with self._write() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO items(strategy, round, sample_token, scene_token, reason, score, status, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                [(strategy, int(round), s, sc, r, x, now, now) for s, sc, r, x in rows])
            return c.total_changes - before

    def claim(self, strategy: str, round: int, reviewer: str, limit: int = 1) -> list[QueueItem]:
        """Take up to ``limit`` pending items, highest score first (ties: oldest first), atomically marking them
        ``in_review`` by ``reviewer``. Two concurrent claims never return the same item."""
        _check_queue_key(strategy, round)
        if not isinstance(reviewer, str) or not reviewer:
            raise LabellingError(f"claim: reviewer must be a non-empty string, got {reviewer!r}")
        if int(limit) < 1:
            raise LabellingError(f"claim: limit must be >= 1, got {limit!r}")
        now = _iso(_now())
        with self._write() as c:
            ids = [r[0] for r in c.execute(
                "SELECT id FROM items WHERE strategy = ? AND round = ? AND status = 'pending' "
                "ORDER BY score DESC, id ASC LIMIT ?", (strategy, int(round), int(limit)))]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            c.execute(f"UPDATE items SET status = 'in_review', reviewer = ?, updated_at = ? WHERE id IN ({marks})",
                      (reviewer, now, *ids))
            rows = c.execute(f"SELECT * FROM items WHERE id IN ({marks}) ORDER BY score DESC, id ASC", ids).fetchall()
        return [self._item(r) for r in rows]

    def complete(self, item_id: int, reviewer: str, boxes: int, cost: float) -> QueueItem:
        """Mark an item ``done`` with its box count and label cost. The item must be pending or in review by
        ``reviewer`` (an item another reviewer holds, or one already done / skipped, is an error)."""
        if isinstance(boxes, bool) or not isinstance(boxes, (int, np.integer)) or boxes < 0:
            raise LabellingError(f"complete item {item_id}: boxes must be >= 0, got {boxes!r}")
        if isinstance(cost, bool) or not isinstance(cost, (int, float, np.number)) or not math.isfinite(cost) \
                or cost < 0:
            raise LabellingError(f"complete item {item_id}: cost must be a finite number >= 0, got {cost!r}")
        with self._write() as c:
            item = self._get(item_id)
            if item.status == "in_review" and item.reviewer != reviewer:
                raise LabellingError(f"complete item {item_id}: it is in review by {item.reviewer!r}, not {reviewer!r}")
            if item.status not in ("pending", "in_review"):
                raise LabellingError(f"complete item {item_id}: status is {item.status!r}, not pending / in_review")
            c.execute("UPDATE items SET status = 'done', reviewer = ?, boxes = ?, cost = ?, updated_at = ? "
                      "WHERE id = ?", (reviewer, int(boxes), float(cost), _iso(_now()), int(item_id)))
            return self._get(item_id)

    def skip(self, item_id: int, reason: str) -> QueueItem:
        """Mark a pending / in-review item ``skipped`` (e.g. an unusable frame); ``reason`` goes in ``note``."""
        with self._write() as c:
            item = self._get(item_id)
            if item.status not in ("pending", "in_review"):
                raise LabellingError(f"skip item {item_id}: status is {item.status!r}, not pending / in_review")
            c.execute("UPDATE items SET status = 'skipped', note = ?, updated_at = ? WHERE id = ?",
                      (str(reason), _iso(_now()), int(item_id)))
            return self._get(item_id)

    def release(self, item_id: int, reviewer: str, note: str = "released") -> QueueItem:
        """Give an ``in_review`` item held by ``reviewer`` back (``pending``, no reviewer), e.g. it did not fit
        the budget."""
        with self._write() as c:
            item = self._get(item_id)
            if item.status != "in_review" or item.reviewer != reviewer:
                raise LabellingError(f"release item {item_id}: it is {item.status!r} by {item.reviewer!r}, "
                                     f"not in review by {reviewer!r}")
            c.execute("UPDATE items SET status = 'pending', reviewer = NULL, note = ?, updated_at = ? WHERE id = ?",
                      (note, _iso(_now()), int(item_id)))
            return self._get(item_id)

    def release_stale(self, older_than_s: float, now: Optional[datetime] = None) -> int:
        """Items ``in_review`` untouched for more than ``older_than_s`` seconds (their reviewer crashed) go back
        to ``pending``; returns how many."""
        if not math.isfinite(float(older_than_s)) or float(older_than_s) < 0:
            raise LabellingError(f"release_stale: older_than_s must be >= 0, got {older_than_s!r}")
        now = now or _now()
        cutoff = _iso(now - timedelta(seconds=float(older_than_s)))
        with self._write() as c:
            before = c.total_changes
            c.execute("UPDATE items SET status = 'pending', reviewer = NULL, note = 'released: stale review', "
                      "updated_at = ? WHERE status = 'in_review' AND updated_at < ?", (_iso(now), cutoff))
            return c.total_changes - before

    # ------------------------------------------------------------------ reading
    def items(self, strategy: Optional[str] = None, round: Optional[int] = None,
              status: Optional[str] = None) -> list[QueueItem]:
        """Items filtered by any of strategy / round / status, ordered by strategy, round, score (desc), id."""
        _check_status(status)
        where, args = [], []
        for col, val in (("strategy", strategy), ("round", round), ("status", status)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(int(val) if col == "round" else val)
        sql = "SELECT * FROM items" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY strategy, round, score DESC, id"
        return [self._item(r) for r in self._conn.execute(sql, args)]

    def summary(self, strategy: str, round: int) -> dict:
        """Counts by status plus ``total``, ``boxes`` and ``cost`` (of done items) of one strategy and round."""
        _check_queue_key(strategy, round)
        out: dict[str, Any] = {s: 0 for s in STATUSES}
        for status, n in self._conn.execute(
                "SELECT status, COUNT(*) FROM items WHERE strategy = ? AND round = ? GROUP BY status",
                (strategy, int(round))):
            out[status] = int(n)
        boxes, cost = self._conn.execute(
            "SELECT COALESCE(SUM(boxes), 0), COALESCE(SUM(cost), 0.0) FROM items "
            "WHERE strategy = ? AND round = ? AND status = 'done'", (strategy, int(round))).fetchone()
        out["total"] = sum(out[s] for s in STATUSES)
        out["boxes"] = int(boxes)
        out["cost"] = float(cost)
        return out

    # ------------------------------------------------------------------ labelling-tool files
    def export_scalabel(self, path: str, strategy: str, round: int, nusc: Any,
                        pre_labels: Optional[Mapping[str, Sequence[LabelBox]]] = None,
                        status: Optional[str] = "pending") -> int:
        """Write the queue's items (of ``status``; ``None``: all) as a Scalabel JSON file for a labelling tool,
        the pre-labels (e.g. the teacher's boxes) as editable labels. Atomic write. Returns the frame count."""
        _check_queue_key(strategy, round)
        _check_status(status)
        pre_labels = dict(pre_labels or {})
        items = self.items(strategy, round, status)
        stray = sorted(set(pre_labels) - {it.sample_token for it in items})
        if stray:
            raise LabellingError(f"export_scalabel: pre_labels for sample token(s) not in the exported queue: "
                                 f"{', '.join(stray[:5])}")
        frame_index = FrameIndex(nusc)
        frames = [scalabel_frame(frame_index, it.sample_token, pre_labels.get(it.sample_token, ()),
                                 {"queue_id": it.id, "reason": it.reason, "score": it.score, "status": it.status})
                  for it in items]
        atomic_write_json(path, scalabel_document(frames, nusc, {"strategy": strategy, "round": int(round),
                                                                 "queue": self.path, "exported_at": _iso(_now())}))
        return len(frames)

    def import_scalabel(self, path: str, strategy: str, round: int, reviewer: str,
                        cost_per_frame: float = 0.0, cost_per_box: float = 0.0) -> dict[str, list[LabelBox]]:
        """Read a (possibly edited) export back: validate every frame and label (any problem -> one
        ``LabellingError`` naming the frame and field, nothing marked), then mark those items ``done`` by
        ``reviewer`` with their box count (and ``cost_per_frame + boxes * cost_per_box``, 0 by default).

        Returns the human boxes per sample token (``score`` 1.0: a reviewed label). A frame with no labels is a
        reviewed frame with nothing in it. Importing the same file again is harmless (same boxes, still done).
        """
        _check_queue_key(strategy, round)
        if not isinstance(reviewer, str) or not reviewer:
            raise LabellingError(f"import_scalabel: reviewer must be a non-empty string, got {reviewer!r}")
        by_token = {it.sample_token: it for it in self.items(strategy, round)}
        out = read_scalabel(path, set(by_token), f"the queue of strategy {strategy!r} round {round}")
        now = _iso(_now())
        with self._write() as c:
            for token, boxes in out.items():
                cost = float(cost_per_frame) + len(boxes) * float(cost_per_box)
                c.execute("UPDATE items SET status = 'done', reviewer = ?, boxes = ?, cost = ?, note = ?, "
                          "updated_at = ? WHERE id = ?",
                          (reviewer, len(boxes), cost, f"imported from {os.path.basename(path)}", now,
                           by_token[token].id))
        return out


# ---------------------------------------------------------------------- helpers
