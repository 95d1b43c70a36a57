"""What farm still does where only basic isolation runs: detect, repair, and keep secrets
out of Ray. (Strict mode stops these attacks outright: test_attacks.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from attacks import BY_NAME, Scene
from helpers import MakeTarget, git, run_to_end

from farm.campaign import allow_listed_environment, repair_refs
from farm.errors import RefMismatch
from farm.gitops import Repo, best_branch
from farm.store import default_url, open_store

ROOT = Path(__file__).resolve().parents[2]
BASIC = '[sandbox]\nisolation = "basic"\n[merge]\nrepeats = 2\nconfirm = 1\n'
REPLAY = '[proposer]\nkind = "replay"\nreplay_file = "drafts.jsonl"\n'


def moving_best(target: Path) -> dict[str, object]:
    """The update-ref attack as a draft for the toy target (which has no `# ATTACK` line)."""
    scene = Scene(target, Path(), Path(), Path(), "refs", "", "", "", "", 0)
    attack: dict[str, Any] = json.loads(BY_NAME["update-ref"].draft(scene))
    edit = attack["edits"][0]
    edit.update(search="LR = 0.5", replace="LR = 0.5\n" + edit["replace"])
    return attack


def test_a_moved_best_branch_stops_the_campaign_and_repair_puts_it_back(
    make_target: MakeTarget, ray_local: None
) -> None:
    better = {
        "title": "LR 1.9",
        "hypothesis": "closer to 2",
        "edits": [{"path": "train.py", "search": "LR = 0.5", "replace": "LR = 1.9"}],
    }
    # screen_z: only a real gain earns confirmations, so the attack runs once, before it
    # (three baseline runs: σ from two has one degree of freedom, where z 3 is a t's 236).
    merge = BASIC.replace("repeats = 2", "repeats = 3")
    target = make_target(extra_toml=merge + "screen_z = 3\n" + REPLAY)
    drafts = [moving_best(target), better]
    (target / "drafts.jsonl").write_text("".join(json.dumps(d) + "\n" for d in drafts))

    with pytest.raises(RefMismatch, match=r"farm/default/best is at .* but the store says"):
        run_to_end(target)  # at the keep of LR 1.9
    with pytest.raises(RefMismatch):  # a resume refuses while the branch is off
        run_to_end(target)
    store = open_store(default_url(target))
    moved = repair_refs(store, Repo(target), "default")
    store.close()
    assert any(m.startswith("farm/default/best: ") for m in moved)
    done = run_to_end(target)
    assert done.code == 0, done.output
    inc = done.store.get_incumbent("default")
    assert inc.candidate_id == done.store.list_candidates("default")[1].id  # LR 1.9
    assert git(target, "rev-parse", best_branch("default")).strip() == inc.sha
    done.store.close()


def test_a_move_after_the_last_keep_is_caught_when_the_campaign_ends(
    make_target: MakeTarget, ray_local: None
) -> None:
    target = make_target(extra_toml=BASIC + REPLAY)
    (target / "drafts.jsonl").write_text(json.dumps(moving_best(target)) + "\n")
    with pytest.raises(RefMismatch):
        run_to_end(target)


def test_repair_refs_points_farm_branches_where_the_store_says(
    make_target: MakeTarget, ray_local: None
) -> None:
    target = make_target(extra_toml=BASIC)
    done = run_to_end(target, max_candidates=2)
    assert done.code == 0, done.output
    inc = done.store.get_incumbent("default")
    planted = git(target, "commit-tree", "-m", "planted", "main^{tree}").strip()
    git(target, "update-ref", f"refs/heads/{best_branch('default')}", planted)
    git(target, "update-ref", "-d", "refs/heads/farm/default/c1")
    moved = repair_refs(done.store, done.repo, "default")
    assert f"farm/default/best: {planted[:12]} -> {inc.sha[:12]}" in moved
    assert any(m.startswith("farm/default/c1: missing -> ") for m in moved)
    assert git(target, "rev-parse", best_branch("default")).strip() == inc.sha
    assert repair_refs(done.store, done.repo, "default") == []
    done.store.close()


def test_secrets_leave_the_environment_before_ray_starts(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    """`farm run` keeps only allow-listed variables before its local Ray starts, so Ray's
    workers and raylet never hold a secret under any name (an API key, MY_PAT, DB_PASS); the
    driver's own initial environment still does, which is why basic mode says the secrets
    guarantee is missing."""
    probe = """\
import os
LR = 0.5
pid = os.getpid()
while pid > 1:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        name = f.read().split(b"\\0")[0].decode()[:40]
    with open(f"/proc/{pid}/environ", "rb") as f:
        leaked = b"scrubbed" in f.read()
    print("ANCESTOR", "LEAKS" if leaked else "clean", name)
    with open(f"/proc/{pid}/stat") as f:
        pid = int(f.read().rsplit(")", 1)[1].split()[1])
print("OWN", "LEAKS" if any("scrubbed" in v for v in os.environ.values()) else "clean")
print("loss: 1.0")
"""
    target = make_target({"train.py": probe}, extra_toml=BASIC)
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": "sk-ant-scrubbed",
        "MY_PAT": "ghp_scrubbed",
        "DB_PASS": "scrubbed-hunter2",
        "FARM_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "farm.cli", "run", str(target), "--max-candidates", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = " ".join(proc.stdout.split())  # the note is wrapped at 80 columns
    named = said.split("kept from Ray and every trial: ", 1)[1].split(" farm: ", 1)[0]
    assert {"ANTHROPIC_API_KEY", "MY_PAT", "DB_PASS"} <= set(named.split(": ", 1)[1].split(", "))
    assert "farm: sandbox: basic" in proc.stdout and "network, secrets, reaped" in proc.stdout
    assert "farm: note: loss comes from code the candidate can edit" in proc.stdout
    export = subprocess.run(
        [sys.executable, "-m", "farm.cli", "status", str(target)], cwd=ROOT, capture_output=True
    )
    assert export.returncode == 0
    store = open_store(default_url(target))
    tails = [t.result.output_tail for t in store.list_trials("default") if t.result]
    store.close()
    ancestors = [
        ln.split(maxsplit=2)
        for tail in tails
        for ln in tail.splitlines()
        if ln.startswith("ANCESTOR")
    ]
    ray = [a for a in ancestors if a[2].startswith("ray::") or "raylet" in a[2]]
    assert ray and all(a[1] == "clean" for a in ray), ancestors
    assert all("OWN clean" in tail for tail in tails)


def test_ray_starts_with_what_the_allow_list_and_the_config_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "MY_PAT": "x",
        "DB_PASS": "x",
        "FARM_T_PLAIN": "redis://db:6379/0",
        "FARM_T_ALLOWED_KEY": "x",
        "RAY_T_AUTH_TOKEN": "x",
        "CUDA_T_MIRROR": "https://user:hunter2@mirror/",
        "PYTHONT_FLAG": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name, value in os.environ.items():  # so that the whole environment comes back after
        monkeypatch.setenv(name, value)
    gone = allow_listed_environment(keep=["FARM_T_ALLOWED_KEY", "PATH"])
    assert {"MY_PAT", "DB_PASS", "FARM_T_PLAIN", "CUDA_T_MIRROR"} <= set(gone)
    assert {"FARM_T_ALLOWED_KEY", "RAY_T_AUTH_TOKEN", "PYTHONT_FLAG", "PATH"} <= set(os.environ)
    assert not set(gone) & set(os.environ)
