"""SQLite store: the embedded default, one file inside the target's `.farm/`.

Records are kept as JSON beside the few columns queries need. Every write runs in a
`BEGIN IMMEDIATE` transaction, so claims and compare-and-sets are atomic across threads
and processes; WAL lets readers (`farm status`) look while a campaign writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farm.errors import StoreError
from farm.records import (
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    Incumbent,
    Trial,
    TrialResult,
    TrialState,
)
from farm.store.base import KIND_PRIORITY, SCHEMA_VERSION, Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incumbents (campaign TEXT PRIMARY KEY, sha TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (campaign TEXT NOT NULL, name TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (campaign, name));
CREATE TABLE IF NOT EXISTS candidates (campaign TEXT NOT NULL, id INTEGER NOT NULL,
    state TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (campaign, id));
CREATE TABLE IF NOT EXISTS trials (campaign TEXT NOT NULL, id TEXT NOT NULL,
    seq INTEGER NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL,
    candidate_id INTEGER, worker TEXT NOT NULL DEFAULT '', lease_expires REAL NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0, data TEXT NOT NULL, result TEXT,
    PRIMARY KEY (campaign, id));
CREATE INDEX IF NOT EXISTS trials_queue ON trials (campaign, state, priority, seq);
CREATE INDEX IF NOT EXISTS trials_candidate ON trials (campaign, candidate_id);
CREATE TABLE IF NOT EXISTS decisions (campaign TEXT NOT NULL, candidate_id INTEGER NOT NULL,
    seq INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (campaign, candidate_id));
"""


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the store directory {path.parent}: {e}") from None
        self._local = threading.local()
        self._init_schema()

    def local_paths(self) -> list[str]:
        return [str(self.path.parent)]

    # -- connection handling ----------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise StoreError(f"cannot open the SQLite store {self.path}: {e}") from None
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _init_schema(self) -> None:
        conn = self._conn()
        conn.executescript(_SCHEMA)
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by farm store schema v{row[0]}, this farm reads "
                    f"v{SCHEMA_VERSION}: use the farm version that wrote it, or a new store"
                )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, args).fetchall()

    # -- campaigns and the incumbent ------------------------------------------------------
    def create_campaign(self, campaign: Campaign, incumbent: Incumbent) -> Campaign:
        with self._tx() as db:
            row = db.execute("SELECT data FROM campaigns WHERE id = ?", (campaign.id,)).fetchone()
            if row is not None:
                return Campaign.from_dict(json.loads(row[0]))
            db.execute(
                "INSERT INTO campaigns (id, data) VALUES (?, ?)",
                (campaign.id, json.dumps(campaign.to_dict())),
            )
            db.execute(
                "INSERT INTO incumbents (campaign, sha, data) VALUES (?, ?, ?)",
                (campaign.id, incumbent.sha, json.dumps(incumbent.to_dict())),
            )
        return campaign

    def get_campaign(self, campaign_id: str) -> Campaign | None:
        rows = self._read("SELECT data FROM campaigns WHERE id = ?", (campaign_id,))
        return Campaign.from_dict(json.loads(rows[0][0])) if rows else None

    def list_campaigns(self) -> list[Campaign]:
        rows = self._read("SELECT data FROM campaigns ORDER BY rowid")
        return [Campaign.from_dict(json.loads(r[0])) for r in rows]

    def set_baseline(self, campaign_id: str, *, metric: float, runs: int, sigma: float) -> None:
        with self._tx() as db:
            row = db.execute("SELECT data FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
            if row is None:
                raise StoreError(f"no campaign {campaign_id!r} in {self.url}")
            data = json.loads(row[0])
            data.update(sigma=sigma, baseline_metric=metric, baseline_runs=runs)
            db.execute(
                "UPDATE campaigns SET data = ? WHERE id = ?", (json.dumps(data), campaign_id)
            )

    def get_incumbent(self, campaign_id: str) -> Incumbent:
        rows = self._read("SELECT data FROM incumbents WHERE campaign = ?", (campaign_id,))
        if not rows:
            raise StoreError(f"no campaign {campaign_id!r} in {self.url}")
        return Incumbent.from_dict(json.loads(rows[0][0]))

    def cas_incumbent(self, campaign_id: str, *, expected_sha: str, new: Incumbent) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE incumbents SET sha = ?, data = ? WHERE campaign = ? AND sha = ?",
                (new.sha, json.dumps(new.to_dict()), campaign_id, expected_sha),
            )
            return cur.rowcount == 1

    # -- candidates -----------------------------------------------------------------------
    def next_candidate_id(self, campaign_id: str) -> int:
        with self._tx() as db:
            db.execute(
                "INSERT INTO counters (campaign, name, value) VALUES (?, 'candidate', 1) "
                "ON CONFLICT (campaign, name) DO UPDATE SET value = value + 1",
                (campaign_id,),
            )
            row = db.execute(
                "SELECT value FROM counters WHERE campaign = ? AND name = 'candidate'",
                (campaign_id,),
            ).fetchone()
        return int(row[0])

    def add_candidate(self, candidate: Candidate) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO candidates (campaign, id, state, data) VALUES (?, ?, ?, ?)",
                (
                    candidate.campaign,
                    candidate.id,
                    candidate.state.value,
                    json.dumps(candidate.to_dict()),
                ),
            )

    def update_candidate(self, candidate: Candidate) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE candidates SET state = ?, data = ? WHERE campaign = ? AND id = ?",
                (
                    candidate.state.value,
                    json.dumps(candidate.to_dict()),
                    candidate.campaign,
                    candidate.id,
                ),
            )

    def get_candidate(self, campaign_id: str, candidate_id: int) -> Candidate | None:
        rows = self._read(
            "SELECT data FROM candidates WHERE campaign = ? AND id = ?", (campaign_id, candidate_id)
        )
        return Candidate.from_dict(json.loads(rows[0][0])) if rows else None

    def list_candidates(
        self, campaign_id: str, states: set[CandidateState] | None = None
    ) -> list[Candidate]:
        rows = self._read(
            "SELECT state, data FROM candidates WHERE campaign = ? ORDER BY id", (campaign_id,)
        )
        wanted = {s.value for s in states} if states is not None else None
        return [
            Candidate.from_dict(json.loads(data))
            for state, data in rows
            if wanted is None or state in wanted
        ]

    def count_candidates(self, campaign_id: str) -> dict[CandidateState, int]:
        rows = self._read(
            "SELECT state, COUNT(*) FROM candidates WHERE campaign = ? GROUP BY state",
            (campaign_id,),
        )
        counts = dict.fromkeys(CandidateState, 0)
        counts.update({CandidateState(s): n for s, n in rows})
        return counts

    # -- trials ---------------------------------------------------------------------------
    def enqueue_trial(self, trial: Trial) -> bool:
        with self._tx() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM trials WHERE campaign = ?",
                (trial.campaign,),
            ).fetchone()[0]
            cur = db.execute(
                "INSERT OR IGNORE INTO trials (campaign, id, seq, state, priority, candidate_id, "
                "data) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (
                    trial.campaign,
                    trial.id,
                    seq,
                    KIND_PRIORITY[trial.kind],
                    trial.candidate_id,
                    json.dumps(trial.to_dict()),
                ),
            )
            return cur.rowcount == 1

    _TRIAL_COLS = "state, worker, lease_expires, deliveries, data, result"

    @staticmethod
    def _trial(row: tuple[Any, ...]) -> Trial:
        state, worker, lease_expires, deliveries, data, result = row
        d = json.loads(data)
        d.update(
            state=state,
            worker=worker,
            lease_expires=lease_expires,
            deliveries=deliveries,
            result=json.loads(result) if result else None,
        )
        return Trial.from_dict(d)

    def claim_trials(self, campaign_id: str, *, worker: str, n: int, lease_s: float) -> list[Trial]:
        if n <= 0:
            return []
        expires = time.time() + lease_s
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM trials WHERE campaign = ? AND state = 'queued' "
                    "ORDER BY priority, seq LIMIT ?",
                    (campaign_id, n),
                )
            ]
            for trial_id in ids:
                db.execute(
                    "UPDATE trials SET state = 'running', worker = ?, lease_expires = ?, "
                    "deliveries = deliveries + 1 WHERE campaign = ? AND id = ?",
                    (worker, expires, campaign_id, trial_id),
                )
            rows = [
                db.execute(
                    f"SELECT {self._TRIAL_COLS} FROM trials WHERE campaign = ? AND id = ?",
                    (campaign_id, trial_id),
                ).fetchone()
                for trial_id in ids
            ]
        return [self._trial(r) for r in rows]

    def heartbeat(
        self, campaign_id: str, trial_ids: list[str], *, worker: str, lease_s: float
    ) -> list[str]:
        held = []
        expires = time.time() + lease_s
        with self._tx() as db:
            for trial_id in trial_ids:
                cur = db.execute(
                    "UPDATE trials SET lease_expires = ? WHERE campaign = ? AND id = ? "
                    "AND state = 'running' AND worker = ?",
                    (expires, campaign_id, trial_id, worker),
                )
                if cur.rowcount == 1:
                    held.append(trial_id)
        return held

    def release(
        self, campaign_id: str, trial_id: str, *, worker: str, max_deliveries: int, failed: bool
    ) -> bool:
        # A failure counts towards dead; an interrupted claim is handed back uncounted.
        state = "CASE WHEN deliveries >= ? THEN 'dead' ELSE 'queued' END" if failed else "'queued'"
        deliveries = "deliveries" if failed else "MAX(deliveries - 1, 0)"
        args = (max_deliveries,) if failed else ()
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE trials SET state = {state}, deliveries = {deliveries}, worker = '', "
                "lease_expires = 0 WHERE campaign = ? AND id = ? AND state = 'running' "
                "AND worker = ?",
                (*args, campaign_id, trial_id, worker),
            )
            return cur.rowcount == 1

    def reap(self, campaign_id: str, *, now: float, max_deliveries: int) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, deliveries FROM trials WHERE campaign = ? AND state = 'running' "
                "AND lease_expires < ?",
                (campaign_id, now),
            ).fetchall()
            for trial_id, deliveries in rows:
                state = "dead" if deliveries >= max_deliveries else "queued"
                db.execute(
                    "UPDATE trials SET state = ?, worker = '', lease_expires = 0 "
                    "WHERE campaign = ? AND id = ?",
                    (state, campaign_id, trial_id),
                )
        return [r[0] for r in rows]

    def record_result(self, campaign_id: str, result: TrialResult) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE trials SET state = 'done', result = ?, lease_expires = 0 "
                "WHERE campaign = ? AND id = ? AND result IS NULL",
                (json.dumps(result.to_dict()), campaign_id, result.trial_id),
            )
            return cur.rowcount == 1

    def get_trial(self, campaign_id: str, trial_id: str) -> Trial | None:
        rows = self._read(
            f"SELECT {self._TRIAL_COLS} FROM trials WHERE campaign = ? AND id = ?",
            (campaign_id, trial_id),
        )
        return self._trial(rows[0]) if rows else None

    def list_trials(
        self,
        campaign_id: str,
        *,
        candidate_id: int | None = None,
        states: set[TrialState] | None = None,
    ) -> list[Trial]:
        sql = f"SELECT {self._TRIAL_COLS} FROM trials WHERE campaign = ?"
        args: list[Any] = [campaign_id]
        if candidate_id is not None:
            sql += " AND candidate_id = ?"
            args.append(candidate_id)
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(s.value for s in states)
        return [self._trial(r) for r in self._read(sql + " ORDER BY seq", tuple(args))]

    def count_trials(self, campaign_id: str) -> dict[TrialState, int]:
        rows = self._read(
            "SELECT state, COUNT(*) FROM trials WHERE campaign = ? GROUP BY state", (campaign_id,)
        )
        counts = {s: 0 for s in TrialState}
        counts.update({TrialState(s): n for s, n in rows})
        return counts

    # -- decisions ------------------------------------------------------------------------
    def record_decision(self, decision: Decision) -> bool:
        with self._tx() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM decisions WHERE campaign = ?",
                (decision.campaign,),
            ).fetchone()[0]
            cur = db.execute(
                "INSERT OR IGNORE INTO decisions (campaign, candidate_id, seq, data) "
                "VALUES (?, ?, ?, ?)",
                (decision.campaign, decision.candidate_id, seq, json.dumps(decision.to_dict())),
            )
            return cur.rowcount == 1

    def get_decision(self, campaign_id: str, candidate_id: int) -> Decision | None:
        rows = self._read(
            "SELECT data FROM decisions WHERE campaign = ? AND candidate_id = ?",
            (campaign_id, candidate_id),
        )
        return Decision.from_dict(json.loads(rows[0][0])) if rows else None

    def list_decisions(self, campaign_id: str) -> list[Decision]:
        rows = self._read(
            "SELECT data FROM decisions WHERE campaign = ? ORDER BY seq", (campaign_id,)
        )
        return [Decision.from_dict(json.loads(r[0])) for r in rows]
