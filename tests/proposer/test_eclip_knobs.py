"""The bundled eCLIP example's knobs: what the demo, the optuna ranges and the bench scripts
name must be constants of examples/eclip/train.py (a renamed knob silently tunes nothing)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from test_mutate import propose_all

from proposer.base import ProposalContext
from proposer.mutate import MutateProposer

ROOT = Path(__file__).resolve().parents[2]
TRAIN = (ROOT / "examples" / "eclip" / "train.py").read_text()
# The hyperparameters: the UPPER_CASE numbers at the top (T_START is a time, not a knob).
KNOBS = dict(re.findall(r"^([A-Z][A-Z_]+) = ([-\d.e]+) ", TRAIN, re.M))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import demo  # noqa: E402
import paired_seeds  # noqa: E402
import proposers  # noqa: E402


def test_the_demo_trains_a_fixed_number_of_steps_and_reaches_the_planted_clamp_fix(
    ctx: ProposalContext,
) -> None:
    assert (KNOBS["NUM_STEPS"], KNOBS["LOGIT_SCALE_MAX"]) == ("300", "0.5")
    ctx.files = {"train.py": TRAIN}
    drafts = propose_all(MutateProposer(seed=0), ctx, n=8)[: demo.MAX_CANDIDATES]
    titles = [d.title for d in drafts]
    # Every knob x2 and x0.5 (mutate's first tier), the planted fix among them.
    assert {t.split()[0] for t in titles} == set(KNOBS)
    assert "LOGIT_SCALE_MAX 0.5 → 1.0" in titles
    assert "NUM_STEPS 300 → 600" in titles


def test_every_knob_the_tuners_and_benches_name_is_in_train_py() -> None:
    knobs = set(KNOBS)
    for rel in ("examples/eclip/farm.toml", "k8s/eclip.farm.toml", "docker/eclip.farm.toml"):
        params = tomllib.loads((ROOT / rel).read_text()).get("proposer", {}).get("params", [])
        assert {p["name"] for p in params} <= knobs, rel
    assert {name for name, _, _ in proposers.IDEAS} <= knobs
    for search, _ in paired_seeds.EDITS.values():
        assert search in TRAIN and (not search or re.match(r"[A-Z_]+ = ", search))
