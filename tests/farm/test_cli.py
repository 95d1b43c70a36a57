"""`farm init`, `farm status` and `farm export --tsv` on real campaigns."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import MakeTarget, farm

from farm.config import MergeConfig, load_config
from farm.errors import CampaignTaken
from farm.roles import Driving
from farm.store import default_url, open_store


def test_init_writes_a_config_that_loads_for_an_autoresearch_repo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train.py").write_text('print(f"val_bpb:          {0.99:.6f}")\n')
    (tmp_path / "prepare.py").write_text("# data\n")
    code, out = farm(capsys, "init", str(tmp_path))
    assert code == 0 and "wrote" in out
    cfg = load_config(tmp_path)
    assert (cfg.editable, cfg.protected, cfg.metric) == (["train.py"], ["prepare.py"], "val_bpb")
    assert farm(capsys, "init", str(tmp_path))[0] == 2  # never overwrites


def test_a_five_line_farm_toml_runs_an_autoresearch_layout(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str], ray_local: None
) -> None:
    train = """\
import os
import random

DEPTH = 8  # model depth
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
print("---")
print(f"val_bpb:          {0.99 + 0.01 * rng.random() + 0.001 * DEPTH:.6f}")
print(f"peak_vram_mb:     {2048.0:.1f}")
"""
    toml = """\
editable = ["train.py"]
protected = ["prepare.py"]
command = "python3 train.py"
metric = "val_bpb"
budget_s = 60
"""
    target = make_target({"train.py": train, "program.md": "# autoresearch\n"}, toml=toml)
    code, out = farm(capsys, "run", str(target), "--max-candidates", "3")
    assert code == 0, out

    code, out = farm(capsys, "status", str(target))
    assert code == 0
    assert "campaign default" in out and "val_bpb" in out and "candidates:" in out

    tsv = target / "results.tsv"
    assert farm(capsys, "export", str(target), "--tsv", "-o", str(tsv))[0] == 0
    rows = list(csv.DictReader(io.StringIO(tsv.read_text()), delimiter="\t"))
    header = tsv.read_text().splitlines()[0].split("\t")
    assert header[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    n = MergeConfig().repeats  # the five-line farm.toml runs the default baseline
    assert sum(r["status"] == "baseline" for r in rows) == n
    others = [r for r in rows if r["status"] != "baseline"]
    assert {r["status"] for r in others} <= {"keep", "discard", "crash"}
    assert all(r["memory_gb"] == "2.0" for r in rows)
    assert all(0.99 <= float(r["val_bpb"]) < 1.03 for r in rows if r["outcome"] == "ok")
    assert len({r["candidate"] for r in others}) == 3

    code, out = farm(capsys, "report", str(target), "--by", "proposer")
    assert code == 0
    (row,) = [line for line in out.splitlines() if line.startswith("| mutate")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["mutate", "one-constant", "—", "3", "100%"]


def test_status_of_an_unknown_campaign_lists_the_known_ones(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target()
    code, out = farm(capsys, "status", str(target), "--campaign", "nope")
    assert code == 2
    assert "no campaign 'nope'" in out


@pytest.mark.parametrize("cmd", [["run", "--max-candidates", "1"], ["control"]])
def test_a_second_driver_of_a_campaign_is_refused_with_who_holds_it(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str], cmd: list[str]
) -> None:
    target = make_target()
    store = open_store(default_url(target))
    holder = "farm run (gpu-node-7:4242:a1b2c3)"
    store.take_lease("default", holder=holder, ttl_s=30, now=time.time())
    code, out = farm(capsys, cmd[0], str(target), *cmd[1:])
    assert code == 2
    said = " ".join(out.split())
    assert f"campaign 'default' is driven by {holder} since" in said
    assert "its lease lapses within 30 s" in said
    assert store.get_campaign("default") is None  # refused before anything was written
    assert store.take_lease("default", holder=holder, ttl_s=30, now=time.time()).holder == holder


def test_a_driver_that_died_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    child = subprocess.Popen(["true"])
    child.wait()  # gone, and reaped
    dead = f"farm run ({socket.gethostname()}:{child.pid}:a1b2c3)"
    store.take_lease("default", holder=dead, ttl_s=30, now=time.time())
    with Driving(store, "default", role="farm control") as driving:
        now = store.take_lease("default", holder="someone", ttl_s=30, now=time.time())
        assert now.holder == driving.holder != dead
    # Gone with the `with`: the next driver needs no wait.
    assert store.take_lease("default", holder="next", ttl_s=30, now=time.time()).holder == "next"
    # A holder alive on this machine (this very process) is not taken over.
    alive = f"farm run (pid {os.getpid()} on {socket.gethostname()})"
    store.take_lease("other", holder=alive, ttl_s=30, now=time.time())
    with pytest.raises(CampaignTaken):
        Driving(store, "other", role="farm control").__enter__()
