"""Whole campaigns on real Ray, real git and real SQLite, with toy targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SECRET, TOY_TOML, TOY_TRAIN, MakeTarget, RunCampaign, git

from farm.errors import ProposerError
from farm.gitops import best_branch
from farm.records import CandidateState, DecisionKind, Outcome, TrialKind, TrialState
from farm.store import default_url, open_store

METRIC_LINE = 'print(f"loss: {loss:.6f}")'


def replay_target(
    make_target: MakeTarget, drafts: list[dict[str, object]], *, budget_s: int = 30, toml: str = ""
) -> Path:
    lines = "".join(json.dumps(d) + "\n" for d in drafts)
    return make_target(
        {"drafts.jsonl": lines},
        toml=TOY_TOML.replace("budget_s = 30", f"budget_s = {budget_s}"),
        extra_toml='[proposer]\nkind = "replay"\nreplay_file = "drafts.jsonl"\n' + toml,
    )


def swap(title: str, search: str, replace: str, path: str = "train.py") -> dict[str, object]:
    return {
        "title": title,
        "hypothesis": title,
        "edits": [{"path": path, "search": search, "replace": replace}],
    }


def test_campaign_keeps_a_real_improvement_and_leaves_the_checkout_alone(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    target = make_target()
    head_before = git(target, "rev-parse", "HEAD")
    done = run_campaign(target, max_candidates=6)
    assert done.code == 0, done.output

    decisions = done.store.list_decisions("default")
    kept = [d for d in decisions if d.kind is DecisionKind.KEPT]
    assert kept, done.output
    titles = {c.id: c.title for c in done.store.list_candidates("default")}
    assert all(titles[d.candidate_id].startswith("LR ") for d in kept), done.output
    # Every candidate got exactly one decision, and every trial ran to a result.
    assert sorted(d.candidate_id for d in decisions) == sorted(titles)
    assert all(t.state is TrialState.DONE for t in done.store.list_trials("default"))

    inc = done.store.get_incumbent("default")
    tip = git(target, "rev-parse", best_branch("default")).strip()
    assert tip == inc.sha == kept[-1].incumbent_after
    assert inc.metric is not None and inc.metric < 1.5  # started at (0.5 - 2)² = 2.25
    assert git(target, "show", f"{tip}:train.py") != TOY_TRAIN
    # The user's branch, index and working tree are untouched.
    assert git(target, "rev-parse", "HEAD") == head_before
    assert git(target, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert git(target, "status", "--porcelain") == ""
    assert (target / "train.py").read_text() == TOY_TRAIN


def test_seed_only_changes_are_not_kept(make_target: MakeTarget, run_campaign: RunCampaign) -> None:
    noisy = """\
import os
import random

WIDTH = 64  # does nothing: the metric is pure seed noise
DEPTH = 4  # does nothing either
DROPOUT = 0.1  # nor this

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
print(f"loss: {1.0 + rng.gauss(0, 0.2):.6f}")
"""
    target = make_target({"train.py": noisy}, extra_toml="[merge]\nrepeats = 4\nconfirm = 2\n")
    done = run_campaign(target, max_candidates=10)
    assert done.code == 0, done.output
    decisions = done.store.list_decisions("default")
    assert len(decisions) == 10
    assert not [d for d in decisions if d.kind is DecisionKind.KEPT], done.output
    camp = done.store.get_campaign("default")
    assert camp is not None and camp.sigma is not None and 0.05 < camp.sigma < 0.6
    # Some looked better in screening and were re-run; none survived confirmation.
    assert done.store.get_incumbent("default").sha == camp.start_sha


def test_every_failure_is_an_outcome_and_the_campaign_goes_on(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    drafts = [
        swap("crash", METRIC_LINE, 'raise SystemExit("diverged at step 3")'),
        swap("hang", METRIC_LINE, "import time\ntime.sleep(1000)"),
        swap("nan", "loss = (LR - 2.0)", 'loss = float("nan") * (LR - 2.0)'),
        swap("silent", METRIC_LINE, "pass"),
        swap("flood", METRIC_LINE, 'print("x" * 4_000_000)\n' + METRIC_LINE),
        swap(
            "tamper",
            METRIC_LINE,
            'open("prepare.py", "a").write("# easier eval\\n")\n' + METRIC_LINE,
        ),
        swap(
            "leak",
            METRIC_LINE,
            'print("leak:", float("ANTHROPIC_API_KEY" in os.environ))\n'
            'print("seen:", os.environ.get("ANTHROPIC_API_KEY", ""))\n' + METRIC_LINE,
        ),
        swap("protected path", "# FIXED", "# mine", path="prepare.py"),
        swap("escape", "x", "y", path="../outside.py"),
        swap("not applying", "LR = 0.7", "LR = 1.0"),
        swap("syntax", "LR = 0.5", "LR = = 0.5"),
    ]
    target = replay_target(make_target, drafts, budget_s=3, toml="[sandbox]\ngrace_s = 1\n")
    done = run_campaign(target)
    assert done.code == 0, done.output

    by_title = {c.title: c for c in done.store.list_candidates("default")}
    assert set(by_title) == {str(d["title"]) for d in drafts}

    def outcome(title: str) -> Outcome:
        (t,) = done.store.list_trials("default", candidate_id=by_title[title].id)
        assert t.result is not None
        return t.result.outcome

    assert outcome("crash") is Outcome.CRASHED
    assert outcome("hang") is Outcome.TIMEOUT
    assert outcome("nan") is Outcome.INVALID_METRIC
    assert outcome("silent") is Outcome.NO_METRIC
    # Strict isolation: the write itself fails (basic mode detects it: tests/workers).
    assert outcome("tamper") is Outcome.CRASHED
    assert outcome("flood") is Outcome.OK
    assert outcome("leak") is Outcome.OK
    for title in ("crash", "hang", "nan", "silent", "tamper"):
        assert by_title[title].state is CandidateState.CRASHED
    (tamper,) = done.store.list_trials("default", candidate_id=by_title["tamper"].id)
    assert tamper.result is not None and "Read-only file system" in tamper.result.output_tail
    crash_reason = done.store.get_decision("default", by_title["crash"].id)
    assert crash_reason is not None and "diverged at step 3" in crash_reason.reason

    (flood,) = done.store.list_trials("default", candidate_id=by_title["flood"].id)
    assert flood.result is not None
    assert len(flood.result.output_tail.encode()) <= 256 * 1024
    (leak,) = done.store.list_trials("default", candidate_id=by_title["leak"].id)
    assert leak.result is not None and leak.result.summary["leak"] == 0.0
    assert SECRET not in leak.result.output_tail

    for title, why in (
        ("protected path", "prepare.py"),
        ("escape", "outside.py"),
        ("not applying", "not found"),
        ("syntax", "line"),
    ):
        cand = by_title[title]
        assert cand.state is CandidateState.REJECTED
        assert why in cand.reason, cand.reason
        assert done.store.list_trials("default", candidate_id=cand.id) == []
    # The protected file in the user's checkout was never touched.
    assert (target / "prepare.py").read_text() == "# FIXED: evaluation and data\n"


def test_with_a_preflight_a_draft_that_crashes_at_import_never_takes_a_full_budget(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    drafts = [
        swap("import crash", "import random", "import randomm"),
        swap("slow LR", "LR = 0.5", "LR = 1.9\nimport time\ntime.sleep(2)"),
        swap(
            "nan, then on",
            METRIC_LINE,
            'print("train_loss: nan", flush=True)\nimport time\ntime.sleep(1000)',
        ),
    ]
    target = replay_target(
        make_target, drafts, budget_s=20, toml="[merge]\nrepeats = 3\npreflight_s = 1\n"
    )
    done = run_campaign(target)
    assert done.code == 0, done.output
    by_title = {c.title: c for c in done.store.list_candidates("default")}

    def trials(title: str) -> list[tuple[str, Outcome | None]]:
        found = done.store.list_trials("default", candidate_id=by_title[title].id)
        return [(t.id.split("-", 2)[2], t.result and t.result.outcome) for t in found]

    for title, outcome in (
        ("import crash", Outcome.CRASHED),
        ("nan, then on", Outcome.INVALID_METRIC),
    ):
        assert by_title[title].state is CandidateState.CRASHED
        assert trials(title) == [("preflight", outcome)]
        assert "failed its 1 s pre-flight" in by_title[title].reason
    assert "ModuleNotFoundError" in by_title["import crash"].reason
    # Still running at 1 s: passed, stopped, then screened at the full budget and kept.
    slow = by_title["slow LR"]
    assert slow.state is CandidateState.KEPT, slow.reason
    assert trials("slow LR")[:2] == [("preflight", Outcome.OK), ("screen", Outcome.OK)]
    pre = done.store.get_trial("default", f"c{slow.id}-g0-preflight")
    assert pre is not None and pre.kind is TrialKind.PREFLIGHT and pre.result is not None
    assert pre.result.metric is None and pre.result.duration_s < 5


def test_a_winner_on_a_stale_base_is_rebased_or_superseded(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    train = TOY_TRAIN.replace(
        "loss = (LR - 2.0) ** 2",
        "MOM = 0.1  # a second knob\nloss = (LR - 2.0) ** 2 + (MOM - 0.9) ** 2",
    )
    drafts = [
        swap("lr", "LR = 0.5", "LR = 1.5"),
        swap("mom", "MOM = 0.1", "MOM = 0.8"),
        swap("lr other", "LR = 0.5", "LR = 1.8 + 0.0"),  # more than a value: not set anew
    ]
    target = make_target(
        {"train.py": train, "drafts.jsonl": "".join(json.dumps(d) + "\n" for d in drafts)},
        extra_toml="[merge]\nconfirm = 1\nmax_rebases = 1\n"
        '[proposer]\nkind = "replay"\nreplay_file = "drafts.jsonl"\nbatch_size = 3\nbacklog = 3\n',
    )
    done = run_campaign(target, slots=2)
    assert done.code == 0, done.output
    cands = {c.title: c for c in done.store.list_candidates("default")}
    states = {t: c.state for t, c in cands.items()}
    # All three beat the commit they were written on; the two LR edits touch one line.
    assert states["mom"] is CandidateState.KEPT
    assert sorted([states["lr"], states["lr other"]]) == sorted(
        [CandidateState.KEPT, CandidateState.SUPERSEDED]
    )
    loser = next(c for c in cands.values() if c.state is CandidateState.SUPERSEDED)
    assert "no longer applies" in loser.reason
    # Whatever was kept second ran again on top of the first: a rebase trial exists.
    kinds = {t.kind for t in done.store.list_trials("default")}
    assert TrialKind.REBASE in kinds
    tip = git(target, "rev-parse", best_branch("default")).strip()
    final = git(target, "show", f"{tip}:train.py")
    assert "MOM = 0.8" in final and ("LR = 1.5" in final or "LR = 1.8 + 0.0" in final)


def test_a_proposer_with_nothing_to_try_stops_before_the_baseline(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    no_knobs = "import os\nprint(f\"loss: {int(os.environ.get('FARM_SEED', 0)) * 0.1}\")\n"
    target = make_target({"train.py": no_knobs})
    with pytest.raises(ProposerError, match="found no number it can change") as err:
        run_campaign(target)
    assert "stopping before any trial runs" in str(err.value)
    store = open_store(default_url(target))
    try:
        assert store.list_trials("default") == []
    finally:
        store.close()


def test_short_screens_run_at_their_budget_and_stop_when_ranks_turn_around(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    from prometheus_client import CollectorRegistry
    from test_metrics import scrape, served

    from farm.metrics import LedgerCollector
    from farm.progress import short_screens
    from farm.report import report_markdown

    # A full budget rewards LR near 2; a short one rewards small LRs (big steps pay off late):
    # every draft lowers LR, so the two budgets rank them exactly apart, and none is kept.
    train = TOY_TRAIN.replace(
        "loss = (LR - 2.0) ** 2",
        'budget = float(os.environ["FARM_BUDGET_S"])\n'
        'print(f"budget_seen: {budget:g}")\n'
        "loss = (LR - 2.0) ** 2 if budget >= 20 else LR",
    ).replace("rng.gauss(0, 0.05)", "rng.gauss(0, 0.001)")
    lrs = ["0.1", "0.2", "0.3", "0.4", "0.45", "0.35", "0.25"]
    drafts = [swap(f"LR {lr}", "LR = 0.5", f"LR = {lr}") for lr in lrs]
    toml = "[merge]\nrepeats = 3\nscreen_budget_s = 2\npromote = 1\nrank_pairs = 3\n"
    lines = "".join(json.dumps(d) + "\n" for d in drafts)
    target = make_target(
        {"train.py": train, "drafts.jsonl": lines},
        extra_toml=toml + '[proposer]\nkind = "replay"\nreplay_file = "drafts.jsonl"\n',
    )
    done = run_campaign(target)
    assert done.code == 0, done.output
    store = done.store
    cands = store.list_candidates("default")
    assert len(cands) == len(lrs) and all(c.state is CandidateState.DISCARDED for c in cands)
    shorted = []
    for c in cands:
        short = store.get_trial("default", f"c{c.id}-g0-short")
        screen = store.get_trial("default", f"c{c.id}-g0-screen")
        assert screen is not None and screen.result is not None
        assert "budget_seen: 30" in screen.result.output_tail
        if short is not None:
            assert short.kind is TrialKind.SHORT and short.result is not None
            assert "budget_seen: 2" in short.result.output_tail
            shorted.append(c.id)
    # Three candidates at both budgets, ranked exactly apart: τ = -1 over 3 pairs, and the
    # candidates started after that were screened at the full budget alone.
    assert 3 <= len(shorted) < len(lrs), done.output
    said = " ".join(done.output.split())  # the notice is wrapped to the terminal's width
    assert "Kendall's τ -1.00 over 3 pairs < min_rank_agreement 0.3" in said
    assert "new candidates are screened at the full budget from now on" in said
    said = short_screens(store, "default")
    assert f"{len(shorted)} in, {len(shorted)} went on" in said
    assert "< 0.3: stopped" in said
    assert f"| short screens | {said} |" in report_markdown(store, "default")
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store, ["default"]))
    server = served(registry)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    pairs = len(shorted) * (len(shorted) - 1) / 2
    assert samples["farm_screen_rank_pairs"][(("campaign", "default"),)] == pairs
    assert samples["farm_screen_rank_agreement"][(("campaign", "default"),)] == -1.0


def test_a_campaign_resumed_after_head_moved_on_says_so(make_target: MakeTarget) -> None:
    import io

    from farm.campaign import prepare
    from farm.config import load_config

    target = make_target()
    cfg = load_config(target)
    store = open_store(default_url(target))
    camp = prepare(target, cfg, store, check_command=False)
    out = io.StringIO()
    assert prepare(target, cfg, store, check_command=False, out=out) == camp
    assert out.getvalue() == ""  # HEAD is where the campaign started
    (target / "prepare.py").write_text("# FIXED: evaluation and data, fixed again\n")
    git(target, "commit", "-qam", "fix the data step")
    head = git(target, "rev-parse", "HEAD").strip()
    assert prepare(target, cfg, store, check_command=False, out=out).start_sha == camp.start_sha
    said = " ".join(out.getvalue().split())
    assert "HEAD has moved on since campaign 'default' started" in said
    assert f"started at {camp.start_sha[:10]} baseline" in said
    assert f"HEAD is {head[:10]} fix the data step" in said
    assert "--restart" in said and "--campaign NAME" in said
    # A HEAD on the campaign's own line (its best branch merged in) is no news.
    git(target, "checkout", "-q", camp.start_sha)
    out = io.StringIO()
    prepare(target, cfg, store, check_command=False, out=out)
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    "changed",
    ['frozen = ["LR"]\n', 'evaluate = "python3 prepare.py"\nartifacts = ["model.pt"]\n'],
)
def test_the_protocol_and_what_the_evaluator_reads_are_fixed_for_a_campaign(
    make_target: MakeTarget, changed: str
) -> None:
    from farm.campaign import prepare
    from farm.config import load_config
    from farm.errors import ConfigError

    target = make_target()
    store = open_store(default_url(target))
    prepare(target, load_config(target), store, check_command=False)
    toml = target / "farm.toml"
    toml.write_text(changed + toml.read_text())
    git(target, "commit", "-qam", "change the protocol")
    with pytest.raises(ConfigError, match="differs from what campaign 'default' started with"):
        prepare(target, load_config(target), store, check_command=False)
