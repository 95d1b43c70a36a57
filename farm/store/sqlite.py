"""SQLite store: the embedded default, one file inside the target's `.farm/`.

Records are kept as JSON beside the few columns queries need. Every write runs in a
`BEGIN IMMEDIATE` transaction, so claims and compare-and-sets are atomic across threads
and processes; WAL lets readers (`farm status`) look while a campaign writes. The running
aggregates (farm/store/stats.py) live in `stats` and move in the same transaction as the
record that moves them (`_upkeep`).
"""

from __future__ import annotations

import collections
import json
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farm.errors import StoreError
from farm.records import (
    CallState,
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    DriverLease,
    Incumbent,
    ProposerCall,
    Trial,
    TrialResult,
    TrialState,
)
from farm.store import stats
from farm.store.base import (
    CLAIM_WINDOW,
    KIND_PRIORITY,
    SCHEMA_VERSION,
    UPGRADABLE_FROM,
    Store,
    calls_from_v3,
    refused_move,
)
from farm.store.stats import CampaignStats, Upkeep

MEMO = 8192  # decoded records kept (SQLiteStore._decoded)

# Schema v1, then what v2 added (aggregates, result order, decision kinds), then what v4 added
# (proposer calls): a new store runs all three, an older one what it lacks.
_SCHEMA_V1 = """
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
_SCHEMA_V2 = """
CREATE TABLE stats (campaign TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (campaign, name)) WITHOUT ROWID;
ALTER TABLE trials ADD COLUMN done_seq INTEGER;
CREATE INDEX trials_done ON trials (campaign, done_seq);
ALTER TABLE decisions ADD COLUMN kind TEXT NOT NULL DEFAULT '';
CREATE INDEX decisions_kind ON decisions (campaign, kind, seq);
CREATE INDEX decisions_seq ON decisions (campaign, seq);
"""
_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS calls (campaign TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (campaign, id));
CREATE TABLE IF NOT EXISTS leases (campaign TEXT PRIMARY KEY, holder TEXT NOT NULL,
    since REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS candidates_state ON candidates (campaign, state, id);
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
        self._bounds_cache: dict[str, list[float]] = {}
        self._memo: collections.OrderedDict[tuple[str, str, object], tuple[str, Any]] = (
            collections.OrderedDict()
        )
        self._memo_lock = threading.Lock()
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
        with self._tx() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            row = (
                db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if "meta" in tables
                else None
            )
            if row is None:
                if tables - {"meta"}:
                    raise StoreError(f"{self.path} is not a farm store: use a new file")
                _script(db, _SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V4)
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) in UPGRADABLE_FROM:
                self._upgrade(db, int(row[0]))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by farm store schema v{row[0]}, this farm reads "
                    f"v{SCHEMA_VERSION}: use the farm version that wrote it, or a new store"
                )

    def _upgrade(self, db: sqlite3.Connection, found: int) -> None:
        """To this schema from v`found`. v1 -> v2: add the aggregates, the result order and
        decision kinds, from the records. v2 -> v3 rewrites no record (its new fields have
        defaults): the version alone keeps a v2 farm off the store. v3 -> v4: proposer calls
        from the candidates (`calls_from_v3`), then the aggregates recounted. v4 -> v5: the
        index of candidates by state (Redis: its sets), which a v4 store made before it had
        none."""
        if found == 1:
            self._upgrade_v1(db)
        if found <= 3:
            self._upgrade_v3(db)
        _script(db, _SCHEMA_V4)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _upgrade_v3(self, db: sqlite3.Connection) -> None:
        _script(db, _SCHEMA_V4)
        for camp in self.list_campaigns():
            rows = db.execute(
                "SELECT data FROM candidates WHERE campaign = ? ORDER BY id", (camp.id,)
            ).fetchall()
            cands, calls = calls_from_v3([json.loads(r[0]) for r in rows])
            db.execute("DELETE FROM candidates WHERE campaign = ?", (camp.id,))
            db.executemany(
                "INSERT INTO candidates (campaign, id, state, data) VALUES (?, ?, ?, ?)",
                [(c.campaign, c.id, c.state.value, json.dumps(c.to_dict())) for c in cands],
            )
            db.executemany(
                "INSERT INTO calls (campaign, id, seq, state, data) VALUES (?, ?, ?, ?, ?)",
                [
                    (camp.id, call.id, -i, call.state.value, json.dumps(call.to_dict()))
                    for i, call in enumerate(reversed(calls), start=1)
                ],
            )
            fields = stats.recount(
                self.list_trials(camp.id),
                cands,
                self.list_decisions(camp.id),
                self.list_calls(camp.id),
                bounds=stats.bounds_of(camp.config),
            )
            db.execute("DELETE FROM stats WHERE campaign = ?", (camp.id,))
            db.executemany(
                "INSERT INTO stats (campaign, name, value) VALUES (?, ?, ?)",
                [(camp.id, k, v) for k, v in fields.items()],
            )

    def _upgrade_v1(self, db: sqlite3.Connection) -> None:
        """The tables and columns of v2; the aggregates are recounted by `_upgrade_v3`."""
        _script(db, _SCHEMA_V2)
        db.execute("UPDATE decisions SET kind = json_extract(data, '$.kind')")
        done = db.execute(
            "SELECT campaign, id FROM trials WHERE result IS NOT NULL "
            "ORDER BY campaign, json_extract(result, '$.finished_at'), seq"
        ).fetchall()
        seqs: dict[str, int] = {}
        for campaign, trial_id in done:
            seqs[campaign] = seqs.get(campaign, 0) + 1
            db.execute(
                "UPDATE trials SET done_seq = ? WHERE campaign = ? AND id = ?",
                (seqs[campaign], campaign, trial_id),
            )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, args).fetchall()

    # -- aggregates -------------------------------------------------------------------------
    @staticmethod
    def _upkeep(db: sqlite3.Connection, campaign_id: str, *ups: Upkeep) -> None:
        """Apply aggregate moves inside the caller's transaction: the one place that does."""
        sql = "INSERT INTO stats (campaign, name, value) VALUES (?, ?, ?) ON CONFLICT DO UPDATE "
        for up in ups:
            for how, values in (
                ("SET value = value + excluded.value", up.add),
                ("SET value = MAX(value, excluded.value)", up.top),
                ("SET value = excluded.value", up.put),
            ):
                db.executemany(sql + how, [(campaign_id, k, v) for k, v in values.items()])

    def _fields(self, campaign_id: str, prefix: str = "") -> dict[str, float]:
        # A range on the primary key: `prefix` + every character sorting after ':'.
        rows = self._read(
            "SELECT name, value FROM stats WHERE campaign = ? AND name >= ? AND name < ?",
            (campaign_id, prefix, prefix + "\U0010ffff"),
        )
        return dict(rows)

    def _bounds(self, campaign_id: str) -> list[float]:
        """The campaign's duration bucket bounds: fixed at its creation, so cached."""
        if campaign_id not in self._bounds_cache:
            self._bounds_cache[campaign_id] = stats.bounds_from(self._fields(campaign_id))
        return self._bounds_cache[campaign_id]

    def stats(self, campaign_id: str) -> CampaignStats:
        return CampaignStats.parse(self._fields(campaign_id))

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
            self._upkeep(db, campaign.id, stats.bounds_upkeep(stats.bounds_of(campaign.config)))
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
        return Incumbent.from_dict(self._decoded("incumbent", campaign_id, "", rows[0][0]))

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
            self._upkeep(db, candidate.campaign, stats.candidate_upkeep(candidate))

    def update_candidate(self, candidate: Candidate) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM candidates WHERE campaign = ? AND id = ?",
                (candidate.campaign, candidate.id),
            ).fetchone()
            if row is None:
                return
            if not CandidateState(row[0]).may_become(candidate.state):
                raise refused_move(candidate, row[0])
            db.execute(
                "UPDATE candidates SET state = ?, data = ? WHERE campaign = ? AND id = ?",
                (
                    candidate.state.value,
                    json.dumps(candidate.to_dict()),
                    candidate.campaign,
                    candidate.id,
                ),
            )
            self._upkeep(db, candidate.campaign, stats.candidate_move(row[0], candidate.state))

    def get_candidate(self, campaign_id: str, candidate_id: int) -> Candidate | None:
        rows = self._read(
            "SELECT data FROM candidates WHERE campaign = ? AND id = ?", (campaign_id, candidate_id)
        )
        if not rows:
            return None
        return Candidate.from_dict(
            self._decoded("candidate", campaign_id, candidate_id, rows[0][0])
        )

    def list_candidates(
        self, campaign_id: str, states: set[CandidateState] | None = None, *, after: int = 0
    ) -> list[Candidate]:
        sql, args = (
            "SELECT id, data FROM candidates WHERE campaign = ? AND id > ?",
            [campaign_id, after],
        )
        if states is not None:  # a step asks for the few running or queued among thousands
            wanted = sorted(s.value for s in states)
            sql += f" AND state IN ({', '.join('?' * len(wanted))})"
            args += wanted
        rows = self._read(sql + " ORDER BY id", tuple(args))
        return [
            Candidate.from_dict(self._decoded("candidate", campaign_id, cid, data))
            for cid, data in rows
        ]

    def count_candidates(self, campaign_id: str) -> dict[CandidateState, int]:
        fields = self._fields(campaign_id, stats.candidate_key(""))
        return {s: round(fields.get(stats.candidate_key(s), 0)) for s in CandidateState}

    # -- paid proposer calls ---------------------------------------------------------------
    def hold_call(self, call: ProposerCall) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO calls (campaign, id, seq, state, data) VALUES (?, ?, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM calls WHERE campaign = ?), ?, ?)",
                (
                    call.campaign,
                    call.id,
                    call.campaign,
                    call.state.value,
                    json.dumps(call.to_dict()),
                ),
            )
            self._upkeep(db, call.campaign, stats.call_hold_upkeep(call))

    def settle_call(self, call: ProposerCall) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT data FROM calls WHERE campaign = ? AND id = ? AND state = ?",
                (call.campaign, call.id, CallState.IN_FLIGHT.value),
            ).fetchone()
            if row is None:
                return False
            call.reserved_usd = json.loads(row[0])["reserved_usd"]
            db.execute(
                "UPDATE calls SET state = ?, data = ? WHERE campaign = ? AND id = ?",
                (call.state.value, json.dumps(call.to_dict()), call.campaign, call.id),
            )
            self._upkeep(db, call.campaign, stats.call_settle_upkeep(call))
            return True

    def list_calls(
        self, campaign_id: str, states: set[CallState] | None = None
    ) -> list[ProposerCall]:
        sql = "SELECT data FROM calls WHERE campaign = ?"
        args: list[Any] = [campaign_id]
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(s.value for s in states)
        rows = self._read(sql + " ORDER BY seq", tuple(args))
        return [ProposerCall.from_dict(json.loads(r[0])) for r in rows]

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
            if cur.rowcount != 1:
                return False
            self._upkeep(db, trial.campaign, stats.trial_move(None, TrialState.QUEUED, kind=""))
            return True

    _TRIAL_COLS = "campaign, id, state, worker, lease_expires, deliveries, data, result"

    def _trial(self, row: tuple[Any, ...]) -> Trial:
        campaign, trial_id, state, worker, lease_expires, deliveries, data, result = row
        d = dict(self._decoded("trial", campaign, trial_id, data))
        d.update(
            state=state,
            worker=worker,
            lease_expires=lease_expires,
            deliveries=deliveries,
            result=json.loads(result) if result else None,
        )
        return Trial.from_dict(d)

    def _decoded(self, table: str, campaign_id: str, record_id: object, data: str) -> Any:
        """A record's `data` column decoded, from memory if it is the text decoded last time.
        Trials and candidates carry their files, which are most of them: a step reads every
        one in flight, and decoding the same files again at every step was most of a step at
        256 slots. The latest MEMO records are kept; records made from one share its `files`
        (nothing changes one in place)."""
        key = (table, campaign_id, record_id)
        with self._memo_lock:
            found = self._memo.get(key)
            if found is not None and found[0] == data:
                self._memo.move_to_end(key)
                return found[1]
        decoded = json.loads(data)
        with self._memo_lock:
            self._memo[key] = (data, decoded)
            self._memo.move_to_end(key)
            if len(self._memo) > MEMO:
                self._memo.popitem(last=False)
        return decoded

    def claim_trials(
        self, campaign_id: str, *, worker: str, n: int, lease_s: float, hold: Collection[str] = ()
    ) -> list[Trial]:
        if n <= 0:
            return []
        expires = time.time() + lease_s
        held = [c for c in hold if c]  # "": no preference, never held
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, COALESCE(json_extract(data, '$.prefer'), '') FROM trials "
                "WHERE campaign = ? AND state = 'queued' ORDER BY priority, seq LIMIT ?",
                (campaign_id, n + CLAIM_WINDOW if held else n),
            ).fetchall()
            ids = [i for i, _ in sorted(rows, key=lambda r: r[1] in held)][:n]
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
            moved = stats.trial_move(TrialState.QUEUED, TrialState.RUNNING, kind="")
            self._upkeep(db, campaign_id, *[moved] * len(ids))
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

    def _give_back(
        self, db: sqlite3.Connection, campaign_id: str, trial_id: str, *, kind: str, dead: bool
    ) -> None:
        """A running trial back to the queue, or dead; shared by release and reap."""
        state = TrialState.DEAD if dead else TrialState.QUEUED
        db.execute(
            "UPDATE trials SET state = ?, worker = '', lease_expires = 0 "
            "WHERE campaign = ? AND id = ?",
            (state.value, campaign_id, trial_id),
        )
        self._upkeep(db, campaign_id, stats.trial_move(TrialState.RUNNING, state, kind=kind))

    def release(
        self, campaign_id: str, trial_id: str, *, worker: str, max_deliveries: int, failed: bool
    ) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT deliveries, json_extract(data, '$.kind') FROM trials "
                "WHERE campaign = ? AND id = ? AND state = 'running' AND worker = ?",
                (campaign_id, trial_id, worker),
            ).fetchone()
            if row is None:
                return False
            deliveries, kind = row
            if not failed:  # an interrupted claim is handed back uncounted
                db.execute(
                    "UPDATE trials SET deliveries = MAX(deliveries - 1, 0) "
                    "WHERE campaign = ? AND id = ?",
                    (campaign_id, trial_id),
                )
            dead = failed and deliveries >= max_deliveries
            self._give_back(db, campaign_id, trial_id, kind=kind, dead=dead)
            return True

    def reap(self, campaign_id: str, *, now: float, max_deliveries: int) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, deliveries, json_extract(data, '$.kind') FROM trials "
                "WHERE campaign = ? AND state = 'running' AND lease_expires < ?",
                (campaign_id, now),
            ).fetchall()
            for trial_id, deliveries, kind in rows:
                dead = deliveries >= max_deliveries
                self._give_back(db, campaign_id, trial_id, kind=kind, dead=dead)
        return [r[0] for r in rows]

    def record_result(self, campaign_id: str, result: TrialResult) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT state, json_extract(data, '$.kind') FROM trials "
                "WHERE campaign = ? AND id = ? AND result IS NULL",
                (campaign_id, result.trial_id),
            ).fetchone()
            if row is None:
                return False
            old, kind = TrialState(row[0]), row[1]
            db.execute(
                "UPDATE trials SET state = 'done', result = ?, lease_expires = 0, "
                "done_seq = (SELECT COALESCE(MAX(done_seq), 0) + 1 FROM trials "
                "WHERE campaign = ?) WHERE campaign = ? AND id = ?",
                (json.dumps(result.to_dict()), campaign_id, campaign_id, result.trial_id),
            )
            self._upkeep(
                db,
                campaign_id,
                stats.trial_move(old, TrialState.DONE, kind=kind),
                stats.result_upkeep(result, kind=kind, bounds=self._bounds(campaign_id)),
            )
            return True

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
        fields = self._fields(campaign_id, stats.STATE)
        return {s: round(fields.get(stats.STATE + s.value, 0)) for s in TrialState}

    def recent_results(self, campaign_id: str, n: int) -> list[Trial]:
        rows = self._read(
            f"SELECT {self._TRIAL_COLS} FROM trials WHERE campaign = ? AND done_seq IS NOT NULL "
            "ORDER BY done_seq DESC LIMIT ?",
            (campaign_id, n),
        )
        return [self._trial(r) for r in reversed(rows)]

    # -- decisions ------------------------------------------------------------------------
    def take_lease(self, campaign_id: str, *, holder: str, ttl_s: float, now: float) -> DriverLease:
        with self._tx() as db:
            row = db.execute(
                "SELECT holder, since, expires FROM leases WHERE campaign = ?", (campaign_id,)
            ).fetchone()
            if row is not None and row[0] != holder and row[2] > now:
                return DriverLease(*row)
            since = row[1] if row is not None and row[0] == holder else now
            db.execute(
                "INSERT OR REPLACE INTO leases (campaign, holder, since, expires) "
                "VALUES (?, ?, ?, ?)",
                (campaign_id, holder, since, now + ttl_s),
            )
            return DriverLease(holder, since, now + ttl_s)

    def drop_lease(self, campaign_id: str, *, holder: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM leases WHERE campaign = ? AND holder = ?", (campaign_id, holder)
            )

    def record_decision(self, decision: Decision) -> bool:
        self.refuse_cycle(decision)
        with self._tx() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM decisions WHERE campaign = ?",
                (decision.campaign,),
            ).fetchone()[0]
            cur = db.execute(
                "INSERT OR IGNORE INTO decisions (campaign, candidate_id, seq, kind, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    decision.campaign,
                    decision.candidate_id,
                    seq,
                    decision.kind.value,
                    json.dumps(decision.to_dict()),
                ),
            )
            if cur.rowcount != 1:
                return False
            self._upkeep(db, decision.campaign, stats.decision_upkeep(decision))
            return True

    def get_decision(self, campaign_id: str, candidate_id: int) -> Decision | None:
        rows = self._read(
            "SELECT data FROM decisions WHERE campaign = ? AND candidate_id = ?",
            (campaign_id, candidate_id),
        )
        return Decision.from_dict(json.loads(rows[0][0])) if rows else None

    def list_decisions(
        self,
        campaign_id: str,
        *,
        kinds: set[DecisionKind] | None = None,
        last: int | None = None,
    ) -> list[Decision]:
        sql = "SELECT data FROM decisions WHERE campaign = ?"
        args: list[Any] = [campaign_id]
        if kinds is not None:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(k.value for k in kinds)
        sql += " ORDER BY seq DESC" + (" LIMIT ?" if last is not None else "")
        if last is not None:
            args.append(last)
        rows = self._read(sql, tuple(args))
        return [Decision.from_dict(json.loads(r[0])) for r in reversed(rows)]


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run statements one by one: `executescript` would commit the caller's transaction."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)
