"""Redis store: the distributed backend, `redis://host:port/db` (or `rediss://` for TLS).

Every write that reads before it writes is one Lua script (atomic on the server) or, where
a JSON record must be rewritten in Python, a WATCH/MULTI transaction. Records are JSON
(`to_dict`); leases are data (a sorted set scored by expiry), so durable retries belong to
the store, not to Redis: a dead dispatcher's trials come back through `reap`. The running
aggregates (farm/store/stats.py) move inside the script that writes the record: Python
computes the `Upkeep` and the scripts (farm/store/redis_lua.py) apply it; only the moves
that depend on what a script finds (a trial's state, a candidate's old state) are made in Lua.

Keys (one campaign's all live under `farm:<campaign>:`, see `_Keys`):

    farm:meta                         hash     schema_version
    farm:campaigns                    list     campaign ids, in creation order
    farm:<c>:campaign                 string   Campaign JSON
    farm:<c>:incumbent                hash     sha, data (Incumbent JSON)
    farm:<c>:candidate_seq            counter  the last candidate id handed out
    farm:<c>:candidates               hash     candidate id -> Candidate JSON
    farm:<c>:candidates:<state>       set      ids of the candidates in that state (schema v5)
    farm:<c>:trials                   list     trial ids in creation order (position = seq)
    farm:<c>:trial:<id>               hash     data (Trial JSON as enqueued), kind, state,
                                               worker, lease_expires, deliveries, qscore,
                                               [result]
    farm:<c>:candidate_trials:<cid>   list     one candidate's trial ids, in creation order
    farm:<c>:queue                    zset     queued trial ids by priority * 1e15 + seq
    farm:<c>:running                  zset     leased trial ids by lease expiry (unix s)
    farm:<c>:dead                     set      dead trial ids
    farm:<c>:done                     list     trial ids, in the order results came in
    farm:<c>:decisions                hash     candidate id -> Decision JSON
    farm:<c>:decision_order           list     candidate ids, in decision order
    farm:<c>:decisions:<kind>         list     candidate ids of one decision kind, in order
    farm:<c>:stats                    hash     aggregates: field -> number (no trial states)
    farm:<c>:calls                    hash     call id -> ProposerCall JSON (schema v4)
    farm:<c>:lease                    hash     the driver lease: holder, since, expires
    farm:upgrade                      string   held while a process upgrades the schema

A trial is in exactly one of queue / running / dead, or none once it has a result, so
`count_trials` is four cardinalities.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthorizationError
from redis.retry import Retry

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
from farm.store import redis_lua as lua
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
from farm.store.stats import CampaignStats

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "farm:"
META_KEY = PREFIX + "meta"
CAMPAIGNS_KEY = PREFIX + "campaigns"
UPGRADE_KEY = PREFIX + "upgrade"
UPGRADE_WAIT_S = 300.0  # how long an upgrade may take before another process takes over

# Transient failures (a restart, a failover, a network blip) are retried with exponential
# backoff: 0.1, 0.2, 0.4, 0.8, 1.6, then 2 s each, ~29 s in all over 18 retries.
RETRIES = 18
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 10.0


class _Keys:
    """The keys of one campaign."""

    def __init__(self, campaign_id: str) -> None:
        p = f"{PREFIX}{campaign_id}:"
        self.campaign = p + "campaign"
        self.incumbent = p + "incumbent"
        self.candidate_seq = p + "candidate_seq"
        self.candidates = p + "candidates"
        self.trials = p + "trials"
        self.trial_prefix = p + "trial:"
        self.queue = p + "queue"
        self.running = p + "running"
        self.dead = p + "dead"
        self.done = p + "done"
        self.decisions = p + "decisions"
        self.decision_order = p + "decision_order"
        self.stats = p + "stats"
        self.calls = p + "calls"
        self.lease = p + "lease"
        self._candidate_trials = p + "candidate_trials:"
        self.candidates_in_prefix = p + "candidates:"
        self._decisions_of = p + "decisions:"

    def trial(self, trial_id: str) -> str:
        return self.trial_prefix + trial_id

    def candidate_trials(self, candidate_id: int) -> str:
        return f"{self._candidate_trials}{candidate_id}"

    def decisions_of(self, kind: str) -> str:
        return self._decisions_of + kind

    def candidates_in(self, state: CandidateState) -> str:
        return self.candidates_in_prefix + state.value


def _redacted(url: str) -> str:
    """The URL with its password masked, for messages and `Store.url`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _is_transient(error: Exception) -> bool:
    # Wrong credentials are ConnectionErrors to redis-py, but waiting will not fix them.
    return not isinstance(error, redis.AuthenticationError | AuthorizationError)


def _as_dict(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _trial(h: dict[str, str]) -> Trial:
    d = json.loads(h["data"])
    d.update(
        state=h["state"],
        worker=h["worker"],
        lease_expires=float(h["lease_expires"]),
        deliveries=int(h["deliveries"]),
        result=json.loads(h["result"]) if "result" in h else None,
    )
    return Trial.from_dict(d)


class RedisStore(Store):
    def __init__(self, url: str, *, retries: int = RETRIES) -> None:
        self.url = _redacted(url)
        try:
            # No retries inside redis-py: its connect retry nests inside its command retry
            # (retries squared) and cannot log. `_call` retries whole operations instead.
            self._r = redis.Redis.from_url(
                url,
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
            )
        except ValueError as e:
            raise StoreError(f"bad Redis URL {self.url}: {e}") from None
        self._retry = Retry(
            ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S),
            retries,
            supported_errors=(redis.ConnectionError, redis.TimeoutError),
        )
        reg = self._r.register_script
        self._create_campaign = reg(lua.CREATE_CAMPAIGN)
        self._cas_incumbent = reg(lua.CAS_INCUMBENT)
        self._add_candidate = reg(lua.ADD_RECORD)
        self._hold_call = reg(lua.ADD_RECORD)
        self._settle_call = reg(lua.SETTLE_CALL)
        self._update_candidate = reg(lua.UPDATE_CANDIDATE)
        self._enqueue = reg(lua.ENQUEUE)
        self._claim = reg(lua.CLAIM)
        self._heartbeat = reg(lua.HEARTBEAT)
        self._release = reg(lua.RELEASE)
        self._reap = reg(lua.REAP)
        self._record_result = reg(lua.RECORD_RESULT)
        self._record_decision = reg(lua.RECORD_DECISION)
        self._take_lease = reg(lua.TAKE_LEASE)
        self._drop_lease = reg(lua.DROP_LEASE)
        self._bounds: dict[str, list[float]] = {}
        self._check_schema()

    # -- connection handling ----------------------------------------------------------------
    def _check_schema(self) -> None:
        # Opening does not retry: a wrong URL or a stopped server should say so at once.
        try:
            with self._r.pipeline() as pipe:
                pipe.hsetnx(META_KEY, "schema_version", SCHEMA_VERSION)
                pipe.hget(META_KEY, "schema_version")
                _, found = pipe.execute()
        except (redis.AuthenticationError, AuthorizationError) as e:
            raise StoreError(
                f"Redis at {self.url} refused the credentials: {e}; fix the user or password "
                "in the store URL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreError(
                f"cannot reach Redis at {self.url}: {e}; start redis-server or fix the store URL"
            ) from None
        except redis.RedisError as e:
            raise StoreError(f"cannot open the Redis store {self.url}: {e}") from None
        if int(found) in UPGRADABLE_FROM:
            self._call(self._upgrade)
        elif int(found) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} was written by farm store schema v{found}, this farm reads "
                f"v{SCHEMA_VERSION}: use the farm version that wrote it, or a new store"
            )

    def _upgrade(self) -> None:
        """To this schema. v1 -> v2: trial kinds, result order, decisions by kind and the
        aggregates, recounted from the records. v2 -> v3 rewrites no record (its new fields
        have defaults; a queued trial without `prefer` prefers no class): the version alone
        keeps a v2 farm off the store. v3 -> v4: proposer calls from the candidates
        (`calls_from_v3`), the aggregates recounted. v4 -> v5: the sets of candidates by
        state, from the records. One process does it (the others wait); redone whole if it
        dies."""
        token = uuid.uuid4().hex
        deadline = time.time() + UPGRADE_WAIT_S
        while not self._r.set(UPGRADE_KEY, token, nx=True, ex=int(UPGRADE_WAIT_S)):
            if int(self._r.hget(META_KEY, "schema_version") or 0) == SCHEMA_VERSION:
                return
            if time.time() > deadline:
                raise StoreError(f"{self.url}: a schema upgrade by another process did not end")
            time.sleep(0.2)
        try:
            found = int(self._r.hget(META_KEY, "schema_version") or 0)
            if found == SCHEMA_VERSION:
                return
            for camp in self.list_campaigns():
                if found == 1:
                    self._upgrade_campaign(camp)
                if found <= 3:
                    self._upgrade_v3(camp)
                self._index_states(camp.id)
            self._r.hset(META_KEY, "schema_version", SCHEMA_VERSION)
        finally:
            self._r.delete(UPGRADE_KEY)

    def _upgrade_campaign(self, camp: Campaign) -> None:
        """v1 -> v2 (the aggregates are recounted by `_upgrade_v3`)."""
        keys = _Keys(camp.id)
        trials = self.list_trials(camp.id)
        decisions = self.list_decisions(camp.id)
        done = sorted((t for t in trials if t.result), key=lambda t: t.result.finished_at)  # type: ignore[union-attr]
        with self._r.pipeline() as pipe:
            for t in trials:
                pipe.hset(keys.trial(t.id), "kind", t.kind.value)
            pipe.delete(keys.done, *(keys.decisions_of(k) for k in DecisionKind))
            if done:
                pipe.rpush(keys.done, *(t.id for t in done))
            for d in decisions:
                pipe.rpush(keys.decisions_of(d.kind), d.candidate_id)
            pipe.execute()

    def _upgrade_v3(self, camp: Campaign) -> None:
        keys = _Keys(camp.id)
        raw = cast(dict[str, str], self._r.hgetall(keys.candidates))
        cands, calls = calls_from_v3([json.loads(raw[k]) for k in sorted(raw, key=int)])
        fields = stats.recount(
            self.list_trials(camp.id),
            cands,
            self.list_decisions(camp.id),
            [*calls, *self.list_calls(camp.id)],
            bounds=stats.bounds_of(camp.config),
        )
        with self._r.pipeline() as pipe:
            pipe.delete(keys.candidates, keys.stats)
            for c in cands:
                pipe.hset(keys.candidates, str(c.id), json.dumps(c.to_dict()))
            for call in calls:
                pipe.hset(keys.calls, call.id, json.dumps(call.to_dict()))
            # Redis counts trial states from its sets: those fields are not kept.
            kept = {k: repr(v) for k, v in fields.items() if not k.startswith(stats.STATE)}
            pipe.hset(keys.stats, mapping=kept)  # type: ignore[arg-type]
            pipe.execute()

    def _call(self, op: Callable[[], T]) -> T:
        """Run one store operation, retrying it whole through transient connection failures.

        Scripts re-run on retry. Most are idempotent (a record added again as it is counts
        once); a claim whose reply was lost leaves its trials leased to nobody until the lease
        lapses and `reap` returns them.
        """
        try:
            return self._retry.call_with_retry(
                op, self._retrying, is_retryable=_is_transient, with_failure_count=True
            )
        except (redis.AuthenticationError, AuthorizationError) as e:
            raise StoreError(f"Redis at {self.url} refused the credentials: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreError(
                f"lost Redis at {self.url} ({e}) and it did not come back after "
                f"{self._retry.get_retries()} retries; check the server, then resume the campaign"
            ) from None
        except redis.RedisError as e:
            raise StoreError(f"Redis at {self.url} failed: {e}") from None

    def _retrying(self, error: Exception, failures: int) -> None:
        if failures <= self._retry.get_retries():  # the last failure raises instead
            if self.on_retry is not None:
                self.on_retry(error)
            log.warning(
                "Redis at %s: %s; retry %d of %d",
                self.url,
                error,
                failures,
                self._retry.get_retries(),
            )

    def persistence(self) -> Persistence:
        """Read the server's persistence settings: CONFIG GET, or INFO persistence where CONFIG
        is renamed or refused (managed Redis, an ACL), which tells AOF on or off but not its
        fsync policy."""

        def read() -> Persistence:
            try:
                info = self._r.info("persistence")
            except redis.ResponseError as e:
                info, info_error = {}, str(e)
            else:
                info_error = ""
            unsaved = info.get("rdb_changes_since_last_save")
            last_save = info.get("rdb_last_save_time")
            try:
                config = self._r.config_get("append*") | self._r.config_get("save")
            except redis.ResponseError as e:
                if not info:
                    return Persistence(
                        aof=None, source=f"neither CONFIG GET ({e}) nor INFO ({info_error})"
                    )
                return Persistence(
                    aof=bool(info.get("aof_enabled")),
                    unsaved=unsaved,
                    last_save=last_save,
                    source=f"INFO persistence (CONFIG GET was refused: {e})",
                )
            return Persistence(
                aof=config.get("appendonly") == "yes",
                fsync=str(config.get("appendfsync") or ""),
                save=str(config.get("save") or ""),
                unsaved=unsaved,
                last_save=last_save,
            )

        return self._call(read)

    def close(self) -> None:
        self._r.close()

    def _trials(self, keys: _Keys, ids: list[str]) -> list[Trial]:
        def read() -> list[dict[str, str]]:
            with self._r.pipeline() as pipe:
                for trial_id in ids:
                    pipe.hgetall(keys.trial(trial_id))
                return pipe.execute()

        return [_trial(h) for h in self._call(read) if h]

    # -- campaigns and the incumbent ------------------------------------------------------
    def create_campaign(self, campaign: Campaign, incumbent: Incumbent) -> Campaign:
        keys = _Keys(campaign.id)
        existing = self._call(
            lambda: self._create_campaign(
                keys=[keys.campaign, keys.incumbent, CAMPAIGNS_KEY, keys.stats],
                args=[
                    campaign.id,
                    json.dumps(campaign.to_dict()),
                    incumbent.sha,
                    json.dumps(incumbent.to_dict()),
                    stats.bounds_upkeep(stats.bounds_of(campaign.config)).to_json(),
                ],
            )
        )
        return Campaign.from_dict(json.loads(existing)) if existing else campaign

    def get_campaign(self, campaign_id: str) -> Campaign | None:
        raw = self._call(lambda: self._r.get(_Keys(campaign_id).campaign))
        return Campaign.from_dict(json.loads(raw)) if raw else None

    def list_campaigns(self) -> list[Campaign]:
        def read() -> list[str | None]:
            ids = cast(list[str], self._r.lrange(CAMPAIGNS_KEY, 0, -1))
            if not ids:
                return []
            return cast(list[str | None], self._r.mget([_Keys(i).campaign for i in ids]))

        return [Campaign.from_dict(json.loads(raw)) for raw in self._call(read) if raw]

    def set_baseline(self, campaign_id: str, *, metric: float, runs: int, sigma: float) -> None:
        key = _Keys(campaign_id).campaign

        # The campaign is JSON rewritten in Python: WATCH makes the rewrite a compare-and-set.
        def update(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise StoreError(f"no campaign {campaign_id!r} in {self.url}")
            data = json.loads(raw)
            data.update(sigma=sigma, baseline_metric=metric, baseline_runs=runs)
            pipe.multi()
            pipe.set(key, json.dumps(data))

        self._call(lambda: self._r.transaction(update, key))

    def get_incumbent(self, campaign_id: str) -> Incumbent:
        raw = self._call(lambda: self._r.hget(_Keys(campaign_id).incumbent, "data"))
        if raw is None:
            raise StoreError(f"no campaign {campaign_id!r} in {self.url}")
        return Incumbent.from_dict(json.loads(raw))

    def cas_incumbent(self, campaign_id: str, *, expected_sha: str, new: Incumbent) -> bool:
        data = json.dumps(new.to_dict())
        return bool(
            self._call(
                lambda: self._cas_incumbent(
                    keys=[_Keys(campaign_id).incumbent], args=[expected_sha, new.sha, data]
                )
            )
        )

    # -- candidates -----------------------------------------------------------------------
    def next_candidate_id(self, campaign_id: str) -> int:
        return int(self._call(lambda: self._r.incr(_Keys(campaign_id).candidate_seq)))

    def add_candidate(self, candidate: Candidate) -> None:
        keys = _Keys(candidate.campaign)
        args = [
            str(candidate.id),
            json.dumps(candidate.to_dict()),
            stats.candidate_upkeep(candidate).to_json(),
        ]
        script_keys = [keys.candidates, keys.stats, keys.candidates_in(candidate.state)]
        if not self._call(lambda: self._add_candidate(keys=script_keys, args=args)):
            raise StoreError(
                f"candidate {candidate.id} of campaign {candidate.campaign!r} already exists "
                f"in {self.url}: take ids from next_candidate_id"
            )

    def update_candidate(self, candidate: Candidate) -> None:
        keys = _Keys(candidate.campaign)
        args = [
            str(candidate.id),
            json.dumps(candidate.to_dict()),
            candidate.state.value,
            stats.candidate_key(""),
            keys.candidates_in_prefix,
            *(s.value for s in CandidateState if s.may_become(candidate.state)),
        ]
        done, was = self._call(
            lambda: self._update_candidate(keys=[keys.candidates, keys.stats], args=args)
        )
        if done == -1:
            raise refused_move(candidate, was)  # replies are decoded (decode_responses)

    def get_candidate(self, campaign_id: str, candidate_id: int) -> Candidate | None:
        raw = self._call(lambda: self._r.hget(_Keys(campaign_id).candidates, str(candidate_id)))
        return Candidate.from_dict(json.loads(raw)) if raw else None

    def list_candidates(
        self, campaign_id: str, states: set[CandidateState] | None = None, *, after: int = 0
    ) -> list[Candidate]:
        keys = _Keys(campaign_id)
        if states is None and not after:
            rows = self._call(lambda: self._r.hgetall(keys.candidates))
            return [Candidate.from_dict(json.loads(rows[k])) for k in sorted(rows, key=int)]
        if states is not None and not states:
            return []

        # A step asks for the few running or queued among thousands decided: their ids from
        # the sets of those states, then only their records; a reader catching up, the ids
        # handed out since it last looked.
        def read() -> list[str | None]:
            if states is None:
                last = int(cast(str | None, self._r.get(keys.candidate_seq)) or 0)
                ids = [str(i) for i in range(after + 1, last + 1)]
            else:
                found = cast(set[str], self._r.sunion([keys.candidates_in(s) for s in states]))
                ids = sorted((i for i in found if int(i) > after), key=int)
            return cast(list[str | None], self._r.hmget(keys.candidates, ids)) if ids else []

        cands = [Candidate.from_dict(json.loads(raw)) for raw in self._call(read) if raw]
        # A candidate that moved on between the two reads is in the state it moved to.
        return [c for c in cands if states is None or c.state in states]

    def _index_states(self, campaign_id: str) -> None:
        """The sets of candidates by state, built from the records (an upgrade to v5)."""
        keys = _Keys(campaign_id)
        raw = cast(dict[str, str], self._r.hgetall(keys.candidates))
        with self._r.pipeline() as pipe:
            pipe.delete(*(keys.candidates_in(s) for s in CandidateState))
            for cid, data in raw.items():
                pipe.sadd(keys.candidates_in(CandidateState(json.loads(data)["state"])), cid)
            pipe.execute()

    def count_candidates(self, campaign_id: str) -> dict[CandidateState, int]:
        names = [stats.candidate_key(s) for s in CandidateState]
        values = self._call(lambda: self._r.hmget(_Keys(campaign_id).stats, names))
        return {s: round(float(v or 0)) for s, v in zip(CandidateState, values, strict=True)}

    # -- paid proposer calls ---------------------------------------------------------------
    def hold_call(self, call: ProposerCall) -> None:
        keys = _Keys(call.campaign)
        args = [call.id, json.dumps(call.to_dict()), stats.call_hold_upkeep(call).to_json()]
        if not self._call(lambda: self._hold_call(keys=[keys.calls, keys.stats], args=args)):
            raise StoreError(f"call {call.id} of campaign {call.campaign!r} already exists")

    def settle_call(self, call: ProposerCall) -> bool:
        keys = _Keys(call.campaign)
        # A hold never changes until it is settled: read it before the script, which
        # settles only a call still in flight.
        held = self._call(lambda: cast(str | None, self._r.hget(keys.calls, call.id)))
        if held is None:
            return False
        call.reserved_usd = json.loads(held)["reserved_usd"]
        args = [call.id, json.dumps(call.to_dict()), stats.call_settle_upkeep(call).to_json()]
        return bool(self._call(lambda: self._settle_call(keys=[keys.calls, keys.stats], args=args)))

    def list_calls(
        self, campaign_id: str, states: set[CallState] | None = None
    ) -> list[ProposerCall]:
        rows = self._call(lambda: self._r.hgetall(_Keys(campaign_id).calls))
        calls = sorted(
            (ProposerCall.from_dict(json.loads(v)) for v in rows.values()),
            key=lambda c: (c.created_at, c.id),
        )
        return [c for c in calls if states is None or c.state in states]

    # -- trials ---------------------------------------------------------------------------
    def enqueue_trial(self, trial: Trial) -> bool:
        keys = _Keys(trial.campaign)
        script_keys = [keys.trial(trial.id), keys.trials, keys.queue]
        if trial.candidate_id is not None:
            script_keys.append(keys.candidate_trials(trial.candidate_id))
        args = [
            trial.id,
            json.dumps(trial.to_dict()),
            str(KIND_PRIORITY[trial.kind]),
            trial.kind.value,
            trial.prefer,
        ]
        return bool(self._call(lambda: self._enqueue(keys=script_keys, args=args)))

    def claim_trials(
        self, campaign_id: str, *, worker: str, n: int, lease_s: float, hold: Collection[str] = ()
    ) -> list[Trial]:
        if n <= 0:
            return []
        keys = _Keys(campaign_id)
        expires = repr(time.time() + lease_s)
        held = [c for c in hold if c]  # "": no preference, never held
        args: list[str | int] = [keys.trial_prefix, n, worker, expires, CLAIM_WINDOW, *held]
        claimed = self._call(lambda: self._claim(keys=[keys.queue, keys.running], args=args))
        return [_trial(_as_dict(flat)) for flat in claimed]

    def heartbeat(
        self, campaign_id: str, trial_ids: list[str], *, worker: str, lease_s: float
    ) -> list[str]:
        if not trial_ids:
            return []
        keys = _Keys(campaign_id)
        expires = repr(time.time() + lease_s)
        return list(
            self._call(
                lambda: self._heartbeat(
                    keys=[keys.running], args=[keys.trial_prefix, worker, expires, *trial_ids]
                )
            )
        )

    def release(
        self, campaign_id: str, trial_id: str, *, worker: str, max_deliveries: int, failed: bool
    ) -> bool:
        keys = _Keys(campaign_id)
        args = [
            keys.trial_prefix,
            trial_id,
            worker,
            str(max_deliveries),
            str(int(failed)),
            stats.DEAD_BY_KIND,
        ]
        script_keys = [keys.queue, keys.running, keys.dead, keys.stats]
        return bool(self._call(lambda: self._release(keys=script_keys, args=args)))

    def reap(self, campaign_id: str, *, now: float, max_deliveries: int) -> list[str]:
        keys = _Keys(campaign_id)
        args = [keys.trial_prefix, repr(now), str(max_deliveries), stats.DEAD_BY_KIND]
        script_keys = [keys.queue, keys.running, keys.dead, keys.stats]
        return list(self._call(lambda: self._reap(keys=script_keys, args=args)))

    def record_result(self, campaign_id: str, result: TrialResult) -> bool:
        keys = _Keys(campaign_id)
        trial_key = keys.trial(result.trial_id)
        # A trial's kind never changes: read before the script, which finds everything else.
        kind = self._call(lambda: cast(str | None, self._r.hget(trial_key, "kind")))
        if kind is None:
            return False
        up = stats.result_upkeep(result, kind=kind, bounds=self._bounds_of(campaign_id))
        script_keys = [trial_key, keys.queue, keys.running, keys.dead, keys.stats, keys.done]
        args = [
            result.trial_id,
            json.dumps(result.to_dict()),
            up.to_json(),
            stats.DEAD_BY_KIND + kind,
        ]
        return bool(self._call(lambda: self._record_result(keys=script_keys, args=args)))

    def _bounds_of(self, campaign_id: str) -> list[float]:
        """The campaign's duration bucket bounds: fixed at its creation, so cached."""
        if campaign_id not in self._bounds:
            raw = self._call(
                lambda: cast(dict[str, str], self._r.hgetall(_Keys(campaign_id).stats))
            )
            self._bounds[campaign_id] = stats.bounds_from(
                {k: float(v) for k, v in raw.items() if k.startswith(stats.BOUND)}
            )
        return self._bounds[campaign_id]

    def get_trial(self, campaign_id: str, trial_id: str) -> Trial | None:
        key = _Keys(campaign_id).trial(trial_id)
        h = self._call(lambda: cast(dict[str, str], self._r.hgetall(key)))
        return _trial(h) if h else None

    def list_trials(
        self,
        campaign_id: str,
        *,
        candidate_id: int | None = None,
        states: set[TrialState] | None = None,
    ) -> list[Trial]:
        keys = _Keys(campaign_id)
        index = keys.trials if candidate_id is None else keys.candidate_trials(candidate_id)
        ids = self._call(lambda: cast(list[str], self._r.lrange(index, 0, -1)))
        if states is not None and ids:
            # Filter on the small state field first: the records carry whole files.
            def read_states() -> list[str]:
                with self._r.pipeline(transaction=False) as pipe:
                    for trial_id in ids:
                        pipe.hget(keys.trial(trial_id), "state")
                    return pipe.execute()

            wanted = {s.value for s in states}
            ids = [i for i, s in zip(ids, self._call(read_states), strict=True) if s in wanted]
        # A trial can move on between the two reads: check the states it came back with.
        trials = self._trials(keys, ids)
        return [t for t in trials if states is None or t.state in states]

    def count_trials(self, campaign_id: str) -> dict[TrialState, int]:
        return self._counts(campaign_id, with_stats=False)[1]

    def _counts(
        self, campaign_id: str, *, with_stats: bool
    ) -> tuple[dict[str, str], dict[TrialState, int]]:
        """(the stats hash, trial states from the sets), in one consistent snapshot."""
        keys = _Keys(campaign_id)

        def read() -> list[Any]:
            with self._r.pipeline() as pipe:  # MULTI
                if with_stats:
                    pipe.hgetall(keys.stats)
                pipe.llen(keys.trials)
                pipe.zcard(keys.queue)
                pipe.zcard(keys.running)
                pipe.scard(keys.dead)
                return pipe.execute()

        found = self._call(read)
        fields = found.pop(0) if with_stats else {}
        total, queued, running, dead = found
        return fields, {
            TrialState.QUEUED: queued,
            TrialState.RUNNING: running,
            TrialState.DONE: total - queued - running - dead,
            TrialState.DEAD: dead,
        }

    def recent_results(self, campaign_id: str, n: int) -> list[Trial]:
        keys = _Keys(campaign_id)
        ids = self._call(lambda: cast(list[str], self._r.lrange(keys.done, -n, -1))) if n else []
        return self._trials(keys, ids)

    def stats(self, campaign_id: str) -> CampaignStats:
        fields, states = self._counts(campaign_id, with_stats=True)
        return CampaignStats.parse({k: float(v) for k, v in fields.items()}, trials=states)

    # -- decisions ------------------------------------------------------------------------
    def take_lease(self, campaign_id: str, *, holder: str, ttl_s: float, now: float) -> DriverLease:
        key = _Keys(campaign_id).lease
        got = self._call(lambda: self._take_lease(keys=[key], args=[holder, ttl_s, repr(now)]))
        who, since, expires = got  # replies are decoded (decode_responses)
        return DriverLease(who, float(since), float(expires))

    def drop_lease(self, campaign_id: str, *, holder: str) -> None:
        key = _Keys(campaign_id).lease
        self._call(lambda: self._drop_lease(keys=[key], args=[holder]))

    def record_decision(self, decision: Decision) -> bool:
        self.refuse_cycle(decision)
        keys = _Keys(decision.campaign)
        script_keys = [
            keys.decisions,
            keys.decision_order,
            keys.decisions_of(decision.kind),
            keys.stats,
        ]
        args = [
            str(decision.candidate_id),
            json.dumps(decision.to_dict()),
            stats.decision_upkeep(decision).to_json(),
        ]
        return bool(self._call(lambda: self._record_decision(keys=script_keys, args=args)))

    def get_decision(self, campaign_id: str, candidate_id: int) -> Decision | None:
        raw = self._call(lambda: self._r.hget(_Keys(campaign_id).decisions, str(candidate_id)))
        return Decision.from_dict(json.loads(raw)) if raw else None

    def list_decisions(
        self,
        campaign_id: str,
        *,
        kinds: set[DecisionKind] | None = None,
        last: int | None = None,
    ) -> list[Decision]:
        keys = _Keys(campaign_id)
        lists = [keys.decision_order] if kinds is None else [keys.decisions_of(k) for k in kinds]
        start = -last if last is not None else 0

        def read() -> list[str | None]:
            order = [i for key in lists for i in cast(list[str], self._r.lrange(key, start, -1))]
            return cast(list[str | None], self._r.hmget(keys.decisions, order)) if order else []

        if last == 0:
            return []
        found = [Decision.from_dict(json.loads(raw)) for raw in self._call(read) if raw]
        if len(lists) > 1:  # several kinds: merge their lists by when each was made
            found.sort(key=lambda d: d.created_at)
        return found if last is None else found[-last:]


# -- persistence ----------------------------------------------------------------------------
# What k8s/redis.yaml starts Redis with: every write in the append-only file, fsynced each
# second (RDB snapshots beside it are a compact restart point, not a log).
DURABLE_FLAGS = "--appendonly yes --appendfsync everysec"


@dataclass(frozen=True)
class Persistence:
    """How much of what farm writes a restart of the Redis server keeps."""

    aof: bool | None  # None: neither CONFIG GET nor INFO could be read
    fsync: str = ""  # appendfsync (always, everysec, no); "" when unknown
    save: str = ""  # the RDB snapshot schedule ("" when none, or unknown)
    unsaved: int | None = None  # writes since the last RDB snapshot (INFO)
    last_save: float | None = None  # when that snapshot was taken (unix s)
    source: str = "CONFIG GET"  # where the settings were read, and why there

    def loses(self) -> str:
        """What a restart of the server may lose of what farm wrote, "" when nothing."""
        if self.aof:
            # appendfsync no: the kernel writes the file out when it likes (~30 s on Linux).
            return "up to ~30 s of writes in a crash of the machine" if self.fsync == "no" else ""
        if not self.save and self.source == "CONFIG GET":
            return "every write (it takes no RDB snapshots either)"
        if self.last_save and self.unsaved is not None:
            when = time.strftime("%H:%M:%S", time.localtime(self.last_save))
            return f"every write since its last RDB snapshot ({when}, {self.unsaved} writes ago)"
        return "every write since its last RDB snapshot"
