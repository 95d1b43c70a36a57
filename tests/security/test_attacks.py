"""The threat model, tested: hostile candidates through real campaigns (Ray, SQLite, git).

One campaign per isolation level runs every attack of attacks.py as a candidate of a
target whose metric is measured by a protected `evaluate` step. Strict must stop them
all; basic stops exactly what it promises, and the rest is the list docs/security.md
prints (BASIC_GAPS), each gap a guarantee `Policy.missing` names for basic.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from attacks import (
    ATTACKS,
    BASIC_GAPS,
    EVALUATE,
    NOT_IN_BASIC,
    OFFSET,
    SCORING,
    TOML,
    TRAIN,
    Ran,
    Scene,
    cleanup,
    plant_file_secrets,
)
from helpers import SECRET, git, run_to_end

from farm.gitops import best_branch
from farm.records import CandidateState, Outcome
from farm.store import open_store
from farm.text import clean_line
from workers.isolation import resolve


def attack_campaign(root: Path, isolation: str, attacks: list[str]) -> Iterator[Ran]:
    root.mkdir()
    target = root / "target"
    target.mkdir()
    scene_word = uuid.uuid4().hex[:10]
    other = root / "other" / ".farm" / "farm.db"
    other.parent.mkdir(parents=True)
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE trials (id TEXT)")  # another campaign's store on this host
    redis_url = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    scene = Scene(
        target=target,
        store_path=target / ".farm" / "farm.db",
        other_store=other,
        cache_repo=Path(),  # known once the start commit is
        word=scene_word,
        secret=SECRET,
        key_file_secret=f"sk-ant-file-{scene_word}",
        secret_in_file=f"host-secret-{scene_word}",
        redis_url=redis_url,
        redis_db=int(redis_url.rsplit("/", 1)[1]),
    )
    files = {
        "train.py": TRAIN,
        "evaluate.py": EVALUATE,
        "scoring.py": SCORING,
        "offset.txt": OFFSET,
        "farm.toml": TOML.format(
            isolation=isolation, path=f"{os.environ['PATH']}:{scene.tool / 'bin'}"
        ),
    }
    for name, text in files.items():
        (target / name).write_text(text)
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "baseline")
    start = git(target, "rev-parse", "HEAD").strip()
    scene.cache_repo = Path(os.environ["FARM_CACHE_DIR"]) / f"{start[:12]}-{target.name}"
    (target / "api.key").write_text(scene.key_file_secret)  # untracked, as users keep keys
    (target / "drafts.jsonl").write_text(
        "".join(a.draft(scene) + "\n" for a in ATTACKS if a.name in attacks)
    )
    plant_file_secrets(scene)
    scene.decoy.mkdir()
    (scene.decoy / "secret.txt").write_text("another trial's files")
    try:
        done = run_to_end(target, slots=2)
        yield Ran(scene, done.store, done.output, done.code)
        done.store.close()
    finally:
        cleanup(scene)
        (scene.decoy / "secret.txt").unlink()
        scene.decoy.rmdir()


@pytest.fixture(scope="module")
def strict(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    root = tmp_path_factory.mktemp("attacks") / "strict"
    yield from attack_campaign(root, "strict", [a.name for a in ATTACKS])


@pytest.fixture(scope="module")
def basic(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    root = tmp_path_factory.mktemp("attacks") / "basic"
    names = [a.name for a in ATTACKS if a.name not in NOT_IN_BASIC]
    yield from attack_campaign(root, "basic", names)


def test_the_strict_campaign_runs_every_attack_to_a_decision_and_keeps_none(strict: Ran) -> None:
    assert strict.code == 0, strict.output
    assert "farm: sandbox: strict (bubblewrap" in strict.output
    cands = strict.store.list_candidates("default")
    assert len(cands) == len(ATTACKS)
    unfinished_or_kept = [
        (c.hypothesis, c.state)
        for c in cands
        if not c.state.is_finished() or c.state is CandidateState.KEPT
    ]
    assert unfinished_or_kept == []
    inc = strict.store.get_incumbent("default")
    assert git(strict.scene.target, "rev-parse", best_branch("default")).strip() == inc.sha
    assert {t.result.isolation for t in strict.store.list_trials("default") if t.result} == {
        "strict"
    }


@pytest.mark.parametrize("attack", [a.name for a in ATTACKS])
def test_attack_fails_in_strict_mode(strict: Ran, attack: str) -> None:
    assert f"ATTEMPTED {attack}" in strict.tail(attack), strict.tail(attack)
    assert not next(a for a in ATTACKS if a.name == attack).worked(strict), strict.tail(attack)


def test_basic_mode_stops_what_it_promises_and_no_more(basic: Ran) -> None:
    assert basic.code == 0, basic.output
    assert "farm: sandbox: basic" in basic.output
    assert "missing guarantees: filesystem, processes" in basic.output
    ran = [a for a in ATTACKS if a.name not in NOT_IN_BASIC]
    for a in ran:
        assert f"ATTEMPTED {a.name}" in basic.tail(a.name), basic.tail(a.name)
    worked = {a.name for a in ran if a.worked(basic)}
    assert worked == BASIC_GAPS, {a: basic.tail(a)[-700:] for a in worked ^ BASIC_GAPS}
    missing = {str(g) for g in resolve("basic", "auto").missing(evaluate=True)}
    assert missing >= {"filesystem", "processes", "secrets", "reaped", "network"}


def test_words_of_a_candidate_reach_terminal_store_and_commits_clean(strict: Ran) -> None:
    cand = strict.candidate("title")
    assert cand.title == clean_line(cand.title) and cand.title.startswith("honest title c99")
    assert "\x1b" not in strict.output
    sha = git(strict.scene.target, "rev-parse", f"farm/default/c{cand.id}").strip()
    message = git(strict.scene.target, "log", "-1", "--format=%B", sha)
    assert "\x1b" not in message and message.splitlines()[0].endswith("loss 0.0001")


def test_the_store_and_ledger_say_what_each_attack_got(strict: Ran) -> None:
    store = open_store(f"sqlite:///{strict.scene.store_path}")
    try:
        assert "killed at the memory limit" in strict.tail("memory")
        assert "outside bounds [0, 100]" in strict.tail("extreme-metric")
        assert "the run left code beside the evaluator: json.py" in strict.tail("planted-code")
        assert "Read-only file system" in strict.tail("tamper")
        for attack in ("pickle-exec", "pickle-eval", "pickle-inst"):
            assert "farm: artifact model.pkl is serialised code: a pickle that calls" in (
                strict.tail(attack)
            )
        assert "exec when loaded" in strict.tail("pickle-exec")
        assert "builtins.eval when loaded" in strict.tail("pickle-eval")
        # What training rewrote of the commit is gone; the evaluator measured the honest loss.
        assert "not handed to evaluate (not in `artifacts`): calibration.txt" in strict.tail(
            "undeclared-file"
        )
        for attack in ("helper-module", "data-file", "helper-link", "undeclared-file"):
            assert strict.outcomes(attack) == {Outcome.OK}
        assert store.get_decision("default", strict.candidate("memory").id) is not None
    finally:
        store.close()
