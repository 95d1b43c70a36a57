"""Proposers compared on examples/eclip: anthropic, optuna and hybrid, one campaign each.

    .venv/bin/python scripts/bench/proposers.py [--max-candidates 12] [--slots 2]

Copies examples/eclip to runs/compare (a git repo of its own, once; `--budget` and
`--tune-trials` go into its farm.toml) and runs `farm run` on it once per proposer, each
as its own campaign (`--campaign <proposer>`) in one SQLite store, with the same slots,
merge settings and candidate budget; then prints `farm report` tables over them (by
proposer, and by strategy) and the best mean_rank each reached. Rerun it to resume:
finished campaigns are not run again.

There is no network here, so `anthropic` and `hybrid` talk through the real SDK over HTTP
to a local Messages API (tests/proposer/fake_anthropic.py) whose replies are written by
`EclipModel` below: it reads the request as Claude would get it (the editable file from
the cached system block, the experiment log from the user turn) and answers with
tool-use drafts on the current code, skipping ideas the log shows were tried. Both get
the same scripted ideas in the same order: structural changes (`STRUCTURES`, each with
the values it starts from) and single-constant changes (`IDEAS`). `anthropic` gets them
as drafts, interleaved; `hybrid` gets one structure per call with its declared knobs,
which TPE then tunes. So the rows compare the mechanisms (who sets the numbers, at what
cost in LLM calls), not how good Claude is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "proposer"))  # the fake Messages API
sys.path.insert(0, str(ROOT / "scripts"))

from demo import copy_example  # noqa: E402
from fake_anthropic import FakeAnthropic, Received, Reply, drafts_reply, usage  # noqa: E402

from farm.cli import main as farm  # noqa: E402
from farm.report import KEY_COLUMNS, MEASURE_COLUMNS, proposer_rows  # noqa: E402
from farm.store import open_store  # noqa: E402

TARGET = ROOT / "runs" / "compare"
PROPOSERS = ("anthropic", "optuna", "hybrid")
SETUP = "# ---------------------------------------------------------------------------\n# Setup"
CONTRASTIVE = (
    "    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2"
)

# Structural changes: (title, hypothesis, a new constant's line, [(search, replace)], knobs
# as (name, low, high, log)). The constant goes above the Setup section.
Knob = tuple[str, float, float, bool]
STRUCTURES: list[tuple[str, str, str, list[tuple[str, str]], list[Knob]]] = [
    (
        "Label smoothing in the contrastive loss",
        "1,000 phrases share most of their words: hard one-hot targets over-penalise near "
        "misses; smoothing them, with the temperature free to rise, should sharpen ranking",
        "LABEL_SMOOTHING = 0.1  # share of each contrastive target spread over the batch",
        [
            (
                CONTRASTIVE,
                "    contrastive = (\n"
                "        F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)\n"
                "        + F.cross_entropy(logits.T, labels, label_smoothing=LABEL_SMOOTHING)\n"
                "    ) / 2",
            )
        ],
        [("LABEL_SMOOTHING", 0.0, 0.3, False), ("LOGIT_SCALE_MAX", 0.25, 5.0, True)],
    ),
    (
        "A floor under the cosine schedule",
        "the LR decays to zero over the last steps of a short run; a floor keeps learning",
        "LR_FLOOR = 0.1  # the cosine decays to this share of the peak LR",
        [
            (
                "    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * progress))",
                "    return LEARNING_RATE * (\n"
                "        LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))\n"
                "    )",
            )
        ],
        [("LR_FLOOR", 0.0, 0.5, False), ("LEARNING_RATE", 3e-4, 3e-2, True)],
    ),
    (
        "Gradient clipping",
        "randomly initialised encoders take large early steps at a 3e-3 peak LR; clipping "
        "the global norm steadies them and may allow a higher LR",
        "GRAD_CLIP = 1.0  # max global gradient norm",
        [
            (
                "    loss.backward()\n    optimizer.step()",
                "    loss.backward()\n"
                "    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)\n"
                "    optimizer.step()",
            )
        ],
        [("GRAD_CLIP", 0.1, 10.0, True), ("LEARNING_RATE", 3e-4, 3e-2, True)],
    ),
    (
        "The initial temperature as a setting",
        "CLIP's log(1/0.07) is tuned for 400M pairs; a small model on 1,000 phrases may want "
        "a different start, together with the clamp",
        "LOGIT_SCALE_INIT = 1.0  # initial log-temperature (CLIP: 2.6593)",
        [
            (
                "        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))",
                "        self.logit_scale = nn.Parameter(torch.tensor(float(LOGIT_SCALE_INIT)))",
            )
        ],
        [("LOGIT_SCALE_INIT", 0.0, 4.6, False), ("LOGIT_SCALE_MAX", 0.25, 5.0, True)],
    ),
]

# Single-constant changes: (constant, new value, hypothesis).
IDEAS = [
    ("LEARNING_RATE", "1e-3", "3e-3 is high for AdamW on a short run; a lower peak is steadier"),
    (
        "LOGIT_SCALE_MAX",
        "4.6052",
        "the log-temperature clamp of 0.5 caps the logit scale at "
        "e^0.5 ≈ 1.6, far below CLIP's 100 (log 4.6052): the softmax can never sharpen",
    ),
    ("WARMUP_FRAC", "0.3", "a longer warmup protects the randomly initialised encoders"),
    ("WEIGHT_DECAY", "0.1", "stronger decay regularises a model that sees little data"),
    ("BATCH_SIZE", "128", "more in-batch negatives make the contrastive task sharper"),
    ("HEATMAP_WEIGHT", "0.5", "the auxiliary loss may pull capacity from retrieval"),
    ("VIT_DEPTH", "6", "two more blocks give the image encoder room to localise shapes"),
    ("LEARNING_RATE", "5e-3", "with the clamp relaxed a higher LR may now be stable"),
    ("WARMUP_FRAC", "0.1", "a short warmup leaves more steps at the peak LR"),
    ("WEIGHT_DECAY", "0.01", "weaker decay: the model is small and underfits"),
    ("HEATMAP_WEIGHT", "2.0", "heatmaps carry the shapes' positions: lean on them more"),
    ("EMBED_DIM", "96", "a wider shared space separates 1,000 phrases better"),
    ("VIT_DEPTH", "3", "a shallower encoder takes more steps in the budget"),
    ("BATCH_SIZE", "96", "between 64 and 128: more negatives at less cost per step"),
    ("LEARNING_RATE", "2e-3", "a slightly lower peak after the temperature fix"),
    ("LOGIT_SCALE_MAX", "3.0", "a looser but still bounded temperature"),
]


class EclipModel:
    """Writes the tool-use replies of the fake Messages API for examples/eclip."""

    def __call__(self, req: Received) -> Reply:
        system = req.body["system"]
        code = system[-1]["text"].split("```", 2)[1]  # train.py, as the incumbent has it
        tried = req.user_text  # the log quotes every earlier draft's title
        hybrid = "knobs" in json.dumps(req.body["tools"])
        m = re.search(r"Propose (\d+) diverse drafts", req.user_text)
        asked = 1 if hybrid else int(m.group(1)) if m else 1
        drafts = [d for d in self._ideas(code, hybrid) if _quoted(d["title"]) not in tried]
        drafts = drafts[:asked]
        # Realistic accounting: the system blocks come from the prompt cache.
        return drafts_reply(
            drafts,
            use=usage(
                input_tokens=len(req.user_text) // 4,
                output_tokens=180 * len(drafts) + 60,
                cache_read=len(json.dumps(system)) // 4,
            ),
        )

    def _ideas(self, code: str, hybrid: bool) -> list[dict[str, Any]]:
        """Structures and constants, interleaved (a hybrid gets structures first)."""
        structures = [d for s in STRUCTURES if (d := _structure(code, s, hybrid))]
        constants = [d for i in IDEAS if (d := _constant(code, i, hybrid))]
        if hybrid:
            return structures + constants
        mixed: list[dict[str, Any]] = []
        for i in range(max(len(structures), len(constants))):
            mixed += structures[i : i + 1] + constants[i : i + 1]
        return mixed


def _structure(code: str, s: Any, hybrid: bool) -> dict[str, Any] | None:
    title, why, constant, edits, knobs = s
    if SETUP not in code or not all(search in code for search, _ in edits):
        return None
    draft = _draft(title, why, [(SETUP, f"{constant}\n\n{SETUP}"), *edits])
    if hybrid:
        draft["knobs"] = [_knob(code + "\n" + constant, *k) for k in knobs]
    return draft


def _constant(code: str, idea: tuple[str, str, str], hybrid: bool) -> dict[str, Any] | None:
    name, value, why = idea
    m = re.search(rf"^{name} = (\S+)(.*)$", code, re.M)
    if m is None or m.group(1) == value:
        return None
    draft = _draft(f"{name} → {value}", why, [(m.group(0), f"{name} = {value}{m.group(2)}")])
    if hybrid:
        low, high = sorted((float(m.group(1)), float(value)))
        draft["knobs"] = [_knob(code, name, low / 2, high * 2, low > 0)]
    return draft


def _quoted(title: str) -> str:
    return json.dumps(title, ensure_ascii=False)  # as the experiment log quotes titles


def _draft(title: str, why: str, edits: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "title": title,
        "hypothesis": why,
        "expected_effect": "lower mean_rank",
        "edits": [{"path": "train.py", "search": s, "replace": r} for s, r in edits],
    }


def _knob(code: str, name: str, low: float, high: float, log: bool) -> dict[str, Any]:
    """A knob's range, widened to hold its current value (a kept tuning may have moved it)."""
    m = re.search(rf"^{name} = (\S+)", code, re.M)
    value = float(m.group(1)) if m else low
    whole = name in ("BATCH_SIZE", "VIT_DEPTH", "EMBED_DIM")
    low, high = min(low, value), max(high, value)
    if whole:
        low, high = float(int(low)), float(int(high) + 1)
    return {"path": "train.py", "name": name, "low": low, "high": high, "log": log, "int": whole}


def prepare_target(target: Path, *, budget_s: float, tune_trials: int) -> None:
    """The example as a repo of its own, with this run's budget and tuning trials."""
    if not copy_example(target):
        return
    toml = target / "farm.toml"
    text = re.sub(r"^budget_s = .*$", f"budget_s = {budget_s:g}", toml.read_text(), flags=re.M)
    # No metrics server: its port may be another campaign's on a shared machine.
    extra = f"\n[proposer]\ntune_trials = {tune_trials}\n\n[metrics]\nenabled = false\n"
    toml.write_text(text + extra)
    git = ["git", "-c", "user.name=farm-bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "commit", "-qam", "bench settings"], cwd=target, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-candidates", type=int, default=12)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--proposers", default=",".join(PROPOSERS))
    ap.add_argument("--budget", type=float, default=300.0, help="budget_s of a trial")
    ap.add_argument("--tune-trials", type=int, default=5, help="hybrid: TPE trials a structure")
    ap.add_argument(
        "--target", type=Path, default=TARGET, help="where the copy of the example goes"
    )
    args = ap.parse_args()
    target = args.target.resolve()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    prepare_target(target, budget_s=args.budget, tune_trials=args.tune_trials)
    api = FakeAnthropic().start()
    api.respond = EclipModel()
    os.environ["ANTHROPIC_BASE_URL"] = api.url
    key = os.environ.get("ANTHROPIC_API_KEY", "sk-ant-local-fake")
    kinds = args.proposers.split(",")
    calls: dict[str, int] = {}
    try:
        for kind in kinds:
            print(f"== {kind}", flush=True)
            # `farm run` takes the key out of this process's environment before Ray starts.
            os.environ["ANTHROPIC_API_KEY"] = key
            before = len(api.requests)
            code = farm(
                [
                    "run",
                    str(target),
                    "--campaign",
                    kind,
                    "--proposer",
                    kind,
                    "--slots",
                    str(args.slots),
                    "--max-candidates",
                    str(args.max_candidates),
                    "--progress-every",
                    "120",
                ]
            )
            calls[kind] = len(api.requests) - before
            if code != 0:
                return code
    finally:
        api.stop()
    store = open_store(f"sqlite:///{target / '.farm' / 'farm.db'}")
    print(f"\nexamples/eclip, {args.slots} slots, {args.max_candidates} candidates per proposer\n")
    print("| campaign | best mean_rank (start) | trials | LLM calls |")
    print("|---|---|---|---|")
    for kind in kinds:
        camp, inc = store.get_campaign(kind), store.get_incumbent(kind)
        start = camp.baseline_metric if camp else None
        best = f"{inc.metric:.4g} ({start:.4g})" if inc.metric and start else "—"
        trials = len(store.list_trials(kind))
        print(f"| {kind} | {best} | {trials} | {calls.get(kind, '—')} |")
    for by in ("proposer", "strategy"):
        columns = ["campaign", *KEY_COLUMNS[by], *MEASURE_COLUMNS]
        print(f"\nfarm report --by {by}:\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for kind in kinds:
            for row in proposer_rows(store, kind, by=by):
                print(f"| {kind} | " + " | ".join(row.cells()) + " |")
    print(f"\nfake Messages API: {len(api.requests)} requests in all (reruns count only new ones)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
