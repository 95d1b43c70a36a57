"""Whole campaigns with the anthropic proposer (on a local Messages API) and with optuna."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fake_anthropic import (
    FakeAnthropic,
    Received,
    Reply,
    draft,
    drafts_reply,
    overloaded,
    rate_limited,
    text_reply,
    usage,
)
from helpers import SECRET, MakeTarget, RunCampaign, farm
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from farm.metrics import LedgerCollector
from farm.records import CallState, CandidateState, DecisionKind
from farm.report import export_tsv, proposer_rows, proposer_table
from farm.store import Store, default_url, open_store
from farm.store.stats import llm_spend

LR = "LR = 0.5  # the knob that matters: the loss is lowest at LR = 2"
PRINT = 'print("---")'
FAST_MERGE = "[merge]\nrepeats = 4\nconfirm = 1\n"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def claude_target(
    make_target: MakeTarget, fake_api: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Path]:
    """A toy target with `[proposer] kind = "anthropic"`: these settings, and the others'."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_api.url)

    def make(**settings: object) -> Path:
        merged = {"kind": "anthropic", "batch_size": 2, "backlog": 2, "backoff_s": 0.3}
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**merged, **settings}.items())
        return make_target(extra_toml=f"[proposer]\n{lines}{FAST_MERGE}")

    return make


def distinct_lr(counter: Iterator[int]) -> Callable[[Received], Reply]:
    """A valid draft per request, each setting LR to a value not set before."""

    def respond(req: Received) -> Reply:
        value = f"{0.5 + next(counter) / 100:g}"
        return drafts_reply([draft(f"LR {value}", LR, LR.replace("0.5", value, 1))])

    return respond


def test_claude_campaign_survives_api_trouble_and_bad_drafts(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    fake_api.push(
        rate_limited(0.05),
        drafts_reply(
            [
                draft("Raise LR", LR, LR.replace("0.5", "1.5")),
                draft("Stale LR", "LR = 0.7", "LR = 1.0"),
            ]
        ),
        # The repair: one fixed draft, and one more than was asked for.
        drafts_reply(
            [
                draft("Other seed", "SEED_OFFSET = 3", "SEED_OFFSET = 4"),
                draft("Easier eval", "# FIXED", "# mine", path="prepare.py"),
            ]
        ),
        overloaded(),
        text_reply("Let me think about it."),
        text_reply("Still thinking."),
        drafts_reply([draft("Flush output", PRINT, 'print("---", flush=True)')]),
    )
    done = run_campaign(claude_target(max_retries=2), max_candidates=3)
    assert done.code == 0, done.output
    assert fake_api.pending == 0
    assert "finished (all 3 candidates decided)" in done.output

    cands = done.store.list_candidates("default")
    # Calls that brought no draft are failed calls, not candidates.
    assert [c.title for c in cands] == [
        "Raise LR",
        "Stale LR",
        "Other seed",
        "Easier eval",
        "Flush output",
    ]
    by_title = {c.title: c for c in cands}
    assert by_title["Raise LR"].state is CandidateState.KEPT
    assert "search text not found" in by_title["Stale LR"].reason
    assert by_title["Easier eval"].reason == "draft 2 is beyond the 1 asked for: recorded, not run"
    assert by_title["Easier eval"].extra
    calls = done.store.list_calls("default")
    assert [c.state for c in calls] == [
        CallState.ANSWERED,
        CallState.ANSWERED,
        CallState.FAILED,
        CallState.FAILED,
        CallState.ANSWERED,
    ]
    assert "did not call submit_drafts: 'Let me think" in calls[2].reason
    assert calls[3].reason.startswith("after a repair request: the answer did not call")
    decisions = done.store.list_decisions("default")
    assert sorted(d.candidate_id for d in decisions) == [c.id for c in cands]
    rejected = [c for c in cands if c.state is CandidateState.REJECTED]
    assert all(done.store.list_trials("default", candidate_id=c.id) == [] for c in rejected)

    # Every paid call is in the ledger: 5 answers of 1000 in + 500 out at Sonnet prices.
    spend = llm_spend(done.store.stats("default"))
    assert (spend.calls, spend.failed_calls, spend.tokens_in) == (5, 2, 5_000)
    assert spend.cost_usd == pytest.approx(5 * 0.0105)
    assert sum(c.cost_usd for c in calls) == pytest.approx(5 * 0.0105)
    assert {(c.proposer, c.strategy, c.model) for c in [*cands, *calls]} == {
        ("anthropic", "single", "claude-sonnet-4-6")
    }
    # The first call waited for the baseline: its prompt has the measured best and noise.
    first = fake_api.requests[0].user_text
    assert "Current best: " in first and "not measured yet" not in first and "σ = " in first
    # Later prompts carry what happened: the rejection and the in-flight or kept work.
    last = fake_api.requests[-1].user_text
    assert "Stale LR" in last and "beyond the 1 asked for" in last, last
    assert '"Raise LR"' in last, last
    assert {r.headers["authorization"] for r in fake_api.requests} == {f"Bearer {SECRET}"}

    table = proposer_table(done.store, "default")
    (row,) = [line for line in table.splitlines() if line.startswith("| anthropic")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["anthropic", "single", "claude-sonnet-4-6", "5", "60%", "33%"]
    assert cells[9] == "$0.05"  # the failed calls' cost too


def test_bad_answers_back_off_then_stop_the_campaign_with_the_cause(
    claude_target: Callable[..., Path],
    fake_api: FakeAnthropic,
    run_campaign: RunCampaign,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_api.respond = lambda req: text_reply("I cannot help with that.")
    done = run_campaign(claude_target())
    assert done.code == 1, done.output
    assert re.search(
        r"farm: proposing stopped: 3 batches in a row from proposer anthropic brought no "
        r"usable draft; the last: the answer did not call submit_drafts: 'I cannot help",
        done.output,
    ), done.output
    # A call and its repair per batch, the next batch only after a growing wait.
    requests = fake_api.requests
    assert len(requests) == 6
    assert requests[2].at - requests[1].at >= 0.3 and requests[4].at - requests[3].at >= 0.6
    assert done.store.list_candidates("default") == []  # failed calls, no candidates
    calls = done.store.list_calls("default")
    assert len(calls) == 6
    assert all(c.state is CallState.FAILED and c.cost_usd > 0 for c in calls)
    assert not [r for r in caplog.records if r.exc_info]  # a cause, not a traceback


def test_an_unavailable_api_is_retried_later_then_named_as_the_cause(
    claude_target: Callable[..., Path],
    fake_api: FakeAnthropic,
    run_campaign: RunCampaign,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_api.respond = lambda req: overloaded()
    done = run_campaign(claude_target(max_retries=0, max_failed_batches=2))
    assert done.code == 1, done.output
    assert "2 batches in a row" in done.output
    assert "the Anthropic API answered 529 after 0 retries: Overloaded" in done.output
    assert len(fake_api.requests) == 2
    assert fake_api.requests[1].at - fake_api.requests[0].at >= 0.3
    # The failed calls are in the ledger, unbilled, and no candidate: results.tsv has the
    # baseline's rows alone.
    assert done.store.list_candidates("default") == []
    rows = export_tsv(done.store, "default").splitlines()[1:]
    assert rows and all(row.split("\t")[3] == "baseline" for row in rows)
    calls = done.store.list_calls("default")
    assert [(c.state, c.cost_usd) for c in calls] == [(CallState.FAILED, 0.0)] * 2
    assert "529" in calls[0].reason
    assert not [r for r in caplog.records if r.exc_info]


def test_drafts_beyond_the_candidate_limit_never_train(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    values = ["0.6", "0.7", "0.8", "0.9"]
    fake_api.push(drafts_reply([draft(f"LR {v}", LR, LR.replace("0.5", v, 1)) for v in values]))
    done = run_campaign(claude_target(), max_candidates=2)
    assert done.code == 0, done.output
    assert len(fake_api.requests) == 1
    trained = {t.candidate_id for t in done.store.list_trials("default") if t.candidate_id}
    cands = done.store.list_candidates("default")
    assert trained == {cands[0].id, cands[1].id}
    assert [(c.state, c.extra) for c in cands[2:]] == [(CandidateState.REJECTED, True)] * 2
    assert "finished (all 2 candidates decided)" in done.output


def test_calls_bringing_only_repeats_and_extras_end_the_campaign_with_nothing_new(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    raise_lr = draft("Raise LR", LR, LR.replace("0.5", "1.5"))
    flush = draft("Flush output", PRINT, 'print("---", flush=True)')
    seed = draft("Other seed", "SEED_OFFSET = 3", "SEED_OFFSET = 4")
    fake_api.push(
        drafts_reply([raise_lr, seed]),  # one asked for: "Other seed" is an extra
        drafts_reply([seed]),  # proposed again: it never ran, so it is no repeat
    )
    fake_api.respond = lambda req: drafts_reply([raise_lr, flush])  # a repeat, then an extra
    done = run_campaign(claude_target(batch_size=1, backlog=1))
    assert done.code == 0, done.output
    assert "has nothing new to try" in done.output
    cands = done.store.list_candidates("default")
    seeds = [c for c in cands if c.title == "Other seed"]
    assert len(seeds) == 2 and (seeds[0].state, seeds[0].extra) == (CandidateState.REJECTED, True)
    assert seeds[1].state is not CandidateState.REJECTED and not seeds[1].extra
    assert done.store.list_trials("default", candidate_id=seeds[1].id)
    flushes = [c for c in cands if c.title == "Flush output"]
    assert flushes and all(c.extra for c in flushes)  # never run, never a failure
    assert done.store.list_calls("default", {CallState.FAILED}) == []
    # results.tsv says so too: an extra is no rejected draft.
    rows = [r.split("\t") for r in export_tsv(done.store, "default").splitlines()[1:]]
    status = {(int(r[5]), r[3]) for r in rows if r[5] and r[3] in ("extra", "rejected")}
    assert {(c.id, "extra") for c in cands if c.extra} <= status


def test_a_change_tried_in_an_earlier_batch_is_not_trained_again(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    more_context = "SEED_OFFSET = 3  # changes only which random numbers are drawn"
    fake_api.push(
        drafts_reply([draft("Raise LR", LR, LR.replace("0.5", "1.5"))]),
        # The same change again, quoting one more line: its edit hash is new, its code not.
        drafts_reply(
            [
                draft(
                    "Raise LR (again)",
                    LR + "\n" + more_context,
                    (LR + "\n").replace("0.5", "1.5") + more_context,
                )
            ]
        ),
        drafts_reply([draft("Flush output", PRINT, 'print("---", flush=True)')]),
    )
    done = run_campaign(claude_target(batch_size=1, backlog=1), max_candidates=2)
    assert done.code == 0, done.output
    cands = {c.title: c for c in done.store.list_candidates("default")}
    again = cands["Raise LR (again)"]
    assert again.state is CandidateState.REJECTED
    assert again.reason.startswith(f"gives the same code as candidate #{cands['Raise LR'].id}")
    assert done.store.list_trials("default", candidate_id=again.id) == []


def test_parallel_calls_stop_at_the_spend_cap_without_overshooting(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    answer = distinct_lr(itertools.count(1))
    # Slow answers: every call of a batch holds its worst case before any is settled (a
    # settled call frees what it did not spend, and a late thread would fit in it).
    fake_api.respond = lambda req: dataclasses.replace(answer(req), delay_s=2.0)
    # A call's worst case here is about $0.04 (its prompt, plus its one draft's share of
    # max_tokens: 1000 tokens out): room for two of the first batch's four calls.
    target = claude_target(
        strategy="focused", batch_size=4, backlog=4, max_tokens=4_000, spend_cap_usd=0.09
    )
    done = run_campaign(target)
    assert done.code == 0, done.output
    m = re.search(
        r"finished \(spend cap reached: \$([\d.]+) spent, and the next call may cost "
        r"up to \$([\d.]+) .*spend_cap_usd = \$0.09",
        done.output,
    )
    assert m, done.output
    cands = done.store.list_candidates("default")
    spent = llm_spend(done.store.stats("default")).cost_usd
    assert spent == pytest.approx(sum(c.cost_usd for c in done.store.list_calls("default")))
    assert spent <= 0.09 and spent + float(m.group(2)) > 0.09
    first = collections.Counter(c.batch_id for c in cands)[cands[0].batch_id]
    assert first == 2  # of the four calls the first batch planned, two fitted


def test_spend_cap_stops_proposing_cleanly_and_holds_after_a_restart(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    # The answer costs 1000 x $3 + 16000 x $15 per million = $0.243; a second call's worst
    # case (16000 tokens out alone: $0.24) would pass the $0.3 cap.
    fake_api.push(
        drafts_reply(
            [
                draft("Raise LR", LR, LR.replace("0.5", "1.5")),
                draft("Flush output", PRINT, 'print("---", flush=True)'),
            ],
            use=usage(1_000, 16_000),
        )
    )
    target = claude_target(spend_cap_usd=0.3)
    done = run_campaign(target)
    assert done.code == 0, done.output
    assert re.search(
        r"finished \(spend cap reached: \$0.243 spent, and the next call may cost up to "
        r"\$0.2\d+ .* over the \$0.057 left; proposer.spend_cap_usd = \$0.3\b",
        done.output,
    ), done.output
    assert len(fake_api.requests) == 1
    cands = done.store.list_candidates("default")
    assert len(cands) == 2 and all(c.state.is_finished() for c in cands)
    assert all(done.store.get_decision("default", c.id) for c in cands)

    again = run_campaign(target)
    assert again.code == 0, again.output
    assert "spend cap reached" in again.output
    assert len(re.findall(r"^\[\d+:\d\d:\d\d\] ", again.output, re.M)) == 1  # the status, once
    assert len(fake_api.requests) == 1  # the ledger remembered the spend


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_mid_call_is_clean_and_the_ledger_keeps_every_paid_call(
    claude_target: Callable[..., Path], fake_api: FakeAnthropic, sig: signal.Signals
) -> None:
    """`farm run` in its own process, with Ray: Ctrl-C or SIGTERM while a repair request is
    in flight, after the first answer was paid for."""
    fake_api.push(
        drafts_reply(
            [
                draft("Raise LR", LR, LR.replace("0.5", "1.5")),
                draft("Stale LR", "LR = 0.7", "LR = 1.0"),
            ]
        ),
        dataclasses.replace(drafts_reply([]), delay_s=60.0),  # the repair hangs
    )
    target = claude_target()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ANTHROPIC_BASE_URL": fake_api.url,
        "ANTHROPIC_API_KEY": SECRET,
        "FARM_CACHE_DIR": str(target.parent / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "run", str(target), "--slots", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background by a shell (`scripts/test.sh &`) hands its
        # children SIGINT ignored, and Python then never turns Ctrl-C into
        # KeyboardInterrupt: give `farm run` the disposition a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while len(fake_api.requests) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(fake_api.requests) == 2, proc.communicate(timeout=30)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted: stopping trials" in out
    assert "1 proposer calls in flight stay counted at their worst case" in out
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    store = open_store(default_url(target))
    try:
        cands = store.list_candidates("default")
        calls = store.list_calls("default")
    finally:
        store.close()
    assert [c.title for c in cands] == ["Raise LR", "Stale LR"]
    assert [c.state for c in calls] == [CallState.ANSWERED, CallState.LOST]
    assert calls[0].cost_usd == pytest.approx(0.0105)  # the answered call
    # The repair at its worst case: 8000 tokens out alone (its one draft's share of 16000).
    assert calls[1].cost_usd > 0.12 and calls[1].cost_usd == calls[1].reserved_usd


def test_propose_without_a_key_says_so_at_once(
    claude_target: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    started = time.monotonic()
    code, output = farm(capsys, "propose", str(claude_target()), "--wait", "600")
    assert code == 2 and "export ANTHROPIC_API_KEY" in output
    assert time.monotonic() - started < 60  # not after waiting for a campaign


def test_optuna_campaign_tunes_the_declared_constant(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    target = make_target(
        extra_toml="[proposer]\n"
        'kind = "optuna"\n'
        "batch_size = 2\n"
        "seed = 1\n"
        "[[proposer.params]]\n"
        'file = "train.py"\n'
        'name = "LR"\n'
        "low = 0.1\n"
        "high = 4.0\n"
        "log = true\n"
    )
    done = run_campaign(target, max_candidates=5)
    assert done.code == 0, done.output
    cands = done.store.list_candidates("default")
    assert len(cands) == 5
    for c in cands:
        assert c.state is not CandidateState.REJECTED, c.reason
        (edit,) = c.edits
        value = float(edit.replace.split("=")[1].split("#")[0])
        assert edit.search.startswith("LR = ") and 0.1 <= value <= 4.0
    assert {(c.proposer, c.strategy) for c in cands} == {("optuna", "tpe")}
    kinds = {d.kind for d in done.store.list_decisions("default")}
    assert kinds <= {DecisionKind.KEPT, DecisionKind.DISCARDED, DecisionKind.SUPERSEDED}
    assert "| optuna | tpe | — | 5 | 100% |" in proposer_table(done.store, "default")


MOMENTUM = (
    "MOMENTUM = 0.0  # a heavy ball: the effective step is LR / (1 - MOMENTUM)\n"
    "loss = (LR / (1 - MOMENTUM) - 2.0) ** 2 + rng.gauss(0, 0.05)"
)


def test_hybrid_tunes_the_knobs_of_a_structural_change_then_asks_again(
    claude_target: Callable[..., Path],
    fake_api: FakeAnthropic,
    run_campaign: RunCampaign,
    capsys: pytest.CaptureFixture[str],
) -> None:
    structure = draft(
        "Heavy-ball momentum",
        "loss = (LR - 2.0) ** 2 + rng.gauss(0, 0.05)",
        MOMENTUM,
    )
    structure["knobs"] = [
        {"path": "train.py", "name": "LR", "low": 0.1, "high": 4.0, "log": True},
        {"path": "train.py", "name": "MOMENTUM", "low": 0.0, "high": 0.9},
    ]
    second = draft("Flush the summary", PRINT, 'print("---", flush=True)')
    second["knobs"] = structure["knobs"][:1]
    third = draft("Another seed", "SEED_OFFSET = 3", "SEED_OFFSET = 5")
    third["knobs"] = structure["knobs"][:1]
    fake_api.push(*(drafts_reply([d]) for d in (structure, second, third)))
    target = claude_target(kind="hybrid", tune_trials=3)
    done = run_campaign(target, max_candidates=9)
    assert done.code == 0, done.output
    cands = done.store.list_candidates("default")
    s, *rest = cands
    assert (s.title, s.strategy, s.proposer) == ("Heavy-ball momentum", "structure", "hybrid")
    assert [k["name"] for k in s.knobs] == ["LR", "MOMENTUM"]
    assert s.params == {"LR": 0.5, "MOMENTUM": 0.0}
    assert s.state.is_finished() and s.state is not CandidateState.REJECTED
    # TPE trials of the structure, each its edit with the knobs set, then Claude again: a
    # trial superseded before it ran (a sibling's keep rewrote its lines) is replaced.
    nxt = next(c for c in rest if c.strategy == "structure")
    children = [c for c in rest if c.parent == s.id]
    assert {c.strategy for c in children} == {"tpe"}
    ran = [c for c in children if done.store.list_trials("default", candidate_id=c.id)]
    assert len(ran) == 3 and max(c.id for c in ran) < nxt.id
    for c in children:
        assert c.state is not CandidateState.REJECTED, c.reason
        assert 0.1 <= c.params["LR"] <= 4.0 and 0.0 <= c.params["MOMENTUM"] <= 0.9
        assert "MOMENTUM" in c.files["train.py"]
    assert nxt.title == "Flush the summary"
    assert "tune #1" in fake_api.requests[1].user_text  # the tuning results reach Claude

    code, table = farm(capsys, "report", str(target), "--by", "strategy")
    assert code == 0
    rows = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"structure", "tpe"}
    tuned = sum(c.strategy == "tpe" for c in cands)
    assert rows["tpe"].startswith(f"| hybrid | tpe | {tuned} | 100% |")
    # A structural call paid for the tuning it spawned: its cost is shared evenly with
    # its children, and the rows add up to what was spent.
    costs = {r.key[1]: r.cost_usd for r in proposer_rows(done.store, "default", by="strategy")}
    paid = {call.id: call.cost_usd for call in done.store.list_calls("default")}
    spawned = {x.id: sum(c.parent == x.id for c in cands) for x in cands if x.call}
    assert spawned[s.id] == len(children) > 0
    assert costs["tpe"] == pytest.approx(
        sum(paid[x.call] * spawned[x.id] / (spawned[x.id] + 1) for x in cands if x.call)
    )
    spent = llm_spend(done.store.stats("default")).cost_usd
    assert costs["tpe"] > 0 and sum(costs.values()) == pytest.approx(spent)
    code, table = farm(capsys, "report", str(target), "--by", "batch")
    assert table.splitlines()[0].startswith("| proposer | batch size | drafts |")
    assert table.splitlines()[0].endswith("| gain/$ |")


REDIS_URL = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the target's own
        return
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


def samples(store: Store) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The exporter's metrics of `store`, as a scrape reads them."""
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store))
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_llm_figures_equal_a_recount_of_the_ledger_on_both_stores(
    claude_target: Callable[..., Path],
    fake_api: FakeAnthropic,
    run_campaign: RunCampaign,
    store_url: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_api.push(
        # Two drafts and one more than asked for; then a failed call; then an answer with
        # no draft and its repair, which brings one.
        drafts_reply(
            [
                draft("Raise LR", LR, LR.replace("0.5", "1.5")),
                draft("Flush output", PRINT, 'print("---", flush=True)'),
                draft("Other seed", "SEED_OFFSET = 3", "SEED_OFFSET = 4"),
            ],
            use=usage(1_200, 700),
        ),
        overloaded(),
        text_reply("Let me think."),
        # An edit c1's keep leaves alone: it applies whenever c1 is kept.
        drafts_reply([draft("Seed 5", "SEED_OFFSET = 3", "SEED_OFFSET = 5")]),
    )
    target = claude_target(max_retries=0, spend_cap_usd=5)
    done = run_campaign(target, max_candidates=3, store_url=store_url)
    assert done.code == 0, done.output
    store, c = done.store, "default"
    calls, cands = store.list_calls(c), store.list_candidates(c)
    states = collections.Counter(call.state for call in calls)
    assert states == {CallState.ANSWERED: 2, CallState.FAILED: 2}
    assert {x.title for x in cands} == {"Raise LR", "Flush output", "Other seed", "Seed 5"}

    m = samples(store)
    one = (("campaign", c), ("proposer", "anthropic"))
    assert {dict(k)["proposer"] for k in m["farm_llm_cost_usd_total"]} == {"anthropic"}
    assert m["farm_llm_cost_usd_total"][one] == pytest.approx(sum(x.cost_usd for x in calls))
    assert sum(x.cost_usd for x in calls) == pytest.approx(0.0141 + 2 * 0.0105)
    for kind, tokens in (("input", "tokens_in"), ("output", "tokens_out")):
        assert m["farm_llm_tokens_total"][(*one, ("type", kind))] == sum(
            getattr(x, tokens) for x in calls
        )
    failed = sum(x.state is CallState.FAILED for x in calls)
    assert m["farm_llm_calls_total"][(*one, ("result", "failed"))] == failed == 2
    assert m["farm_llm_calls_total"][(*one, ("result", "ok"))] == len(calls) - failed
    assert m["farm_llm_held_usd"][one] == 0
    extra = sum(x.extra for x in cands)
    rejected = sum(x.state is CandidateState.REJECTED and not x.extra for x in cands)
    assert extra == 1
    assert {
        result: m["farm_proposals_total"][(*one, ("result", result))]
        for result in ("valid", "rejected", "extra")
    } == {"valid": len(cands) - rejected - extra, "rejected": rejected, "extra": extra}

    # `farm status` and the report say the same spend.
    args = [str(target)] + (["--store", store_url] if store_url else [])
    code, out = farm(capsys, "status", *args)
    assert code == 0
    spent = sum(x.cost_usd for x in calls)
    assert f"LLM (cap $5.00): ${spent:.4g} in 4 calls (2 failed)" in " ".join(out.split())
    assert sum(r.cost_usd for r in proposer_rows(store, c)) == pytest.approx(spent)
