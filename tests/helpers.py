"""Shared test material: toy targets and small git helpers (fixtures live in conftest.py)."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pytest
import redis

from farm.campaign import prepare
from farm.config import TargetConfig, load_config
from farm.controller import Controller
from farm.gitops import Repo
from farm.records import CandidateState, Draft, Edit, Outcome, TrialResult, TrialState
from farm.store import Store, default_url, open_store
from farm.store.stats import CampaignStats, bounds_of, recount

# A secret in the driver's environment: the sandbox must keep it from training code.
SECRET = "sk-ant-farm-test-secret"

TOY_TRAIN = """\
import os
import random

LR = 0.5  # the knob that matters: the loss is lowest at LR = 2
SEED_OFFSET = 3  # changes only which random numbers are drawn: a seed-only change

rng = random.Random(SEED_OFFSET * 1_000_003 + int(os.environ.get("FARM_SEED", "0")))
loss = (LR - 2.0) ** 2 + rng.gauss(0, 0.05)
print("---")
print(f"loss: {loss:.6f}")
"""


def _draft(title: str, search: str, replace: str) -> str:
    edit = {"path": "train.py", "search": search, "replace": replace}
    return json.dumps({"title": title, "hypothesis": f"{title}: a test", "edits": [edit]}) + "\n"


_METRIC_LINE = 'print(f"loss: {loss:.6f}")'
# Replay drafts for TOY_TRAIN that end every way that takes no time: one keep, a discard,
# three failed trials and a rejected draft.
MIXED_DRAFTS = "".join(
    _draft(*d)
    for d in [
        ("LR 1.9", "LR = 0.5", "LR = 1.9"),
        ("crash", _METRIC_LINE, 'raise SystemExit("diverged")'),
        ("nan", "loss = (LR - 2.0)", 'loss = float("nan") * (LR - 2.0)'),
        ("silent", _METRIC_LINE, "pass"),
        ("LR 0.4", "LR = 0.5", "LR = 0.4"),
        ("not applying", "LR = 0.7", "LR = 1.0"),
    ]
)
MIXED_TOML = '[proposer]\nkind = "replay"\nreplay_file = "drafts.jsonl"\n'

TOY_TOML = """\
editable = ["train.py"]
protected = ["prepare.py"]
command = "python3 train.py"
metric = "loss"
budget_s = 30
"""


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": "/usr/bin:/bin",
        "HOME": str(repo),
    }
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env
    ).stdout


MakeTarget = Callable[..., Path]


@dataclass
class Finished:
    """A campaign that ran to its end in this process."""

    code: int
    output: str
    store: Store
    cfg: TargetConfig
    repo: Repo


RunCampaign = Callable[..., Finished]


def run_to_end(
    target: Path,
    *,
    slots: int = 2,
    max_candidates: int | None = None,
    store_url: str | None = None,
    out: TextIO | None = None,
) -> Finished:
    """Run the campaign of `target` in this process (on an initialised Ray) to its end;
    what it prints goes to `out` when given (a terminal, say), else into `output`."""
    from farm.campaign import RunOptions, prepare, run
    from farm.config import load_config
    from farm.store import default_url, open_store
    from proposer.registry import make_proposer

    cfg = load_config(target)
    store = open_store(store_url or default_url(target))
    prepare(target, cfg, store, check_command=True)
    captured = io.StringIO()
    code = run(
        store=store,
        repo=Repo(target),
        cfg=cfg,
        proposer=make_proposer(cfg.proposer, target=target),
        opts=RunOptions(slots=slots, max_candidates=max_candidates, progress_every_s=1e9),
        out=out or captured,
    )
    return Finished(code, captured.getvalue(), store, cfg, Repo(target))


def free_port() -> int:
    """A loopback TCP port nobody listens on (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# A campaign whose scripted results keep c1, merge c2 onto it untried (then measure it) and
# discard c3: the lineage the crash-point and store-rollback tests take apart.
LINEAGE_TRAIN = "LR = 0.5  # learning rate\nMOM = 0.1  # momentum\nDROP = 0.0  # dropout\n"
LINEAGE_TOML = (
    "[merge]\nrepeats = 4\nconfirm = 2\nz = 1.5\nscreen_z = 0\nfutility_z = -99\n"
    "efficacy_z = 99\nmax_rebases = 0\n"
)
_LINEAGE_EDITS = [
    ("LR = 0.5", "LR = 1.0"),
    ("MOM = 0.1", "MOM = 0.9"),
    ("DROP = 0.0", "DROP = 0.5"),
]
_LINEAGE_METRIC = {"base-0": 0.9, "base-1": 1.1, "base-2": 0.9, "base-3": 1.1}
_LINEAGE_METRIC |= {"c1-": 0.5, "c2-": 0.7}
LINEAGE_DRAFTS = [Draft(f"{s} → {r}", "", [Edit("train.py", s, r)]) for s, r in _LINEAGE_EDITS]


def lineage_metric(trial_id: str) -> float:
    """The scripted result of a trial of the lineage campaign."""
    return next((v for k, v in _LINEAGE_METRIC.items() if trial_id.startswith(k)), 1.2)


class RedisServer:
    """A redis-server of a test's own on a free loopback port, started with `flags` (its
    persistence: a test kills and restarts it, so the shared server is never touched)."""

    def __init__(self, data_dir: Path, *flags: str, password: str | None = None) -> None:
        self.data_dir, self.flags, self.password = data_dir, flags, password
        self.port = free_port()
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--dir", str(self.data_dir), *self.flags),
                *(("--requirepass", self.password) if self.password else ()),
            ],
            stdout=subprocess.DEVNULL,
        )
        with redis.Redis.from_url(self.url) as client:
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def farm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the `farm` CLI in this process: (exit code, everything it printed)."""
    from farm.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def farm_metric_names(tmp: Path) -> set[str]:
    """Every sample name farm serves (the ledger's and a role's), for checking the PromQL
    of dashboards and alert rules against: a campaign with a result and a keep in a real
    SQLite store, and a role process's registry with slots and a proposer."""
    from prometheus_client import CollectorRegistry

    from farm.config import ProposerConfig
    from farm.metrics import LedgerCollector, RoleMetrics
    from farm.progress import ClusterView
    from farm.records import (
        Campaign,
        Decision,
        DecisionKind,
        Incumbent,
        Outcome,
        Trial,
        TrialKind,
        TrialResult,
    )
    from farm.store import open_store
    from proposer.registry import make_proposer

    store = open_store(f"sqlite:///{tmp / 'names.db'}")
    store.create_campaign(
        Campaign(id="c", target="/t", start_sha="a" * 40, config={"budget_s": 60}),
        Incumbent(sha="a" * 40, metric=1.0),
    )
    store.set_baseline("c", metric=1.0, runs=3, sigma=0.1)
    trial = Trial(id="t", campaign="c", kind=TrialKind.CANDIDATE, commit_sha="b", base_sha="a",
                  seed=0, candidate_id=1)  # fmt: skip
    store.enqueue_trial(trial)
    store.record_result("c", TrialResult(trial_id="t", outcome=Outcome.OK, metric=0.5))
    store.record_decision(
        Decision(campaign="c", candidate_id=1, kind=DecisionKind.KEPT, reason="", sigma=0.1)
    )
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store))
    role = RoleMetrics(campaign="c", role="run")
    role.watch_slots(busy=lambda: 0, cluster=lambda: ClusterView(slots=1, asked=1))
    role.measure(make_proposer(ProposerConfig(kind="mutate"), target=tmp))
    role.instrument(store).get_campaign("c")  # a role's store series appear with its first call
    names = {s.name for r in (registry, role.registry) for m in r.collect() for s in m.samples}
    store.close()
    return names


class Bench:
    """A campaign whose trials finish when the test says, with the metric it says."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.cfg: TargetConfig = load_config(target)
        self.store: Store = open_store(default_url(target))
        prepare(target, self.cfg, self.store, check_command=False)
        self.repo = Repo(target)
        self.ctl = Controller(store=self.store, repo=self.repo, cfg=self.cfg, campaign="default")
        self.ctl.sync_best_branch()  # as `farm run` starts

    def propose(self, *edits: tuple[str, str]) -> list[int]:
        """Record one draft per (search, replace) on the incumbent as the proposer would."""
        from farm.propose import build_context, record_drafts

        ctx = build_context(self.store, self.cfg, "default")
        drafts = [
            Draft(title=f"{s} → {r}", hypothesis="", edits=[Edit("train.py", s, r)])
            for s, r in edits
        ]
        before = {c.id for c in self.store.list_candidates("default")}
        record_drafts(self.store, self.cfg, "default", drafts, ctx)
        return sorted({c.id for c in self.store.list_candidates("default")} - before)

    def finish(
        self,
        metric_of: dict[str, float],
        *,
        slots: int = 8,
        only: bool = False,
        on: dict[str, str] | None = None,
    ) -> list[str]:
        """Step, then finish the queued trials: metric by trial-id prefix, else 1.0.

        `only`: finish just the trials a prefix names; the others stay queued. `on`: the
        hardware class they ran on, by trial-id prefix.
        """
        self.ctl.step(slots=slots)
        done = []
        for t in self.store.claim_trials("default", worker="test", n=100, lease_s=60):
            metric = next((v for k, v in metric_of.items() if t.id.startswith(k)), None)
            if metric is None and only:
                self.store.release("default", t.id, worker="test", max_deliveries=3, failed=False)
                continue
            hardware = next((v for k, v in (on or {}).items() if t.id.startswith(k)), "")
            self.store.record_result(
                "default",
                TrialResult(
                    trial_id=t.id, outcome=Outcome.OK, metric=metric or 1.0, hardware=hardware
                ),
            )
            done.append(t.id)
        return done

    def state(self, cand_id: int) -> CandidateState:
        cand = self.store.get_candidate("default", cand_id)
        assert cand is not None
        return cand.state


def flat(stats: CampaignStats) -> dict[str, float]:
    """Every number of a CampaignStats under a path-like name, for approximate comparison."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: object) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)
        elif value is not None:
            assert isinstance(value, int | float), (prefix, value)
            out[prefix] = float(value)

    walk("", stats)
    return out


def recounted(store: Store, campaign: str = "c") -> CampaignStats:
    camp = store.get_campaign(campaign)
    assert camp is not None
    trials = store.list_trials(campaign)
    fields = recount(
        trials,
        store.list_candidates(campaign),
        store.list_decisions(campaign),
        store.list_calls(campaign),
        bounds=bounds_of(camp.config),
    )
    states = collections.Counter(t.state for t in trials)
    return CampaignStats.parse(fields, trials={s: states[s] for s in TrialState})
