"""Proposers compared on examples/eclip: mutate, optuna and anthropic, one campaign each.

    .venv/bin/python scripts/bench/proposers.py [--max-candidates 24] [--slots 2]

Copies examples/eclip to runs/compare (a git repo of its own, once) and runs `farm run`
on it once per proposer, each as its own campaign (`--campaign <proposer>`) in one SQLite
store, with the same slots, merge settings and candidate budget; then prints one
`farm report --by proposer` table over the three and the best mean_rank each reached.
Rerun it to resume: finished campaigns are not run again.

There is no network here, so `anthropic` talks through the real SDK over HTTP to a local
Messages API (tests/proposer/fake_anthropic.py) whose replies are written by `EclipModel`
below: it reads the request as Claude would get it — the editable file from the cached
system block, the ledger digest from the user turn — and answers with tool-use drafts that
edit the current values, skipping ideas the digest shows were tried. Its ideas and their
order are scripted here: its row measures the path (prompt, tool use, validation, repair,
cost accounting, dedupe) on a real target, not how good Claude is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "proposer"))  # the fake Messages API
sys.path.insert(0, str(ROOT / "scripts"))

from demo import copy_example  # noqa: E402
from fake_anthropic import FakeAnthropic, Received, Reply, drafts_reply, usage  # noqa: E402

from farm.cli import main as farm  # noqa: E402
from farm.report import PROPOSER_COLUMNS, proposer_rows  # noqa: E402
from farm.store import open_store  # noqa: E402

TARGET = ROOT / "runs" / "compare"
PROPOSERS = ("anthropic", "optuna", "mutate")

# (constant, new value, hypothesis), in the order the scripted model offers them. The first
# batch follows program.md's first idea (the temperature), as a model reading it would.
IDEAS = [
    ("LEARNING_RATE", "1e-3", "3e-3 is high for AdamW on a 300-step run; a lower peak is steadier"),
    (
        "LOGIT_SCALE_MAX",
        "4.6052",
        "the log-temperature clamp of 0.5 caps the logit scale at "
        "e^0.5 ≈ 1.6, far below CLIP's 100 (log 4.6052): the softmax can never sharpen",
    ),
    ("WARMUP_STEPS", "100", "a longer warmup protects the randomly initialised encoders"),
    ("WEIGHT_DECAY", "0.1", "stronger decay regularises a model that sees little data"),
    ("BATCH_SIZE", "128", "more in-batch negatives make the contrastive task sharper"),
    ("HEATMAP_WEIGHT", "0.5", "the auxiliary loss may pull capacity from retrieval"),
    ("VIT_DEPTH", "6", "two more blocks give the image encoder room to localise shapes"),
    ("LEARNING_RATE", "5e-3", "with the clamp relaxed a higher LR may now be stable"),
    ("WARMUP_STEPS", "30", "a short warmup leaves more steps at the peak LR"),
    ("WEIGHT_DECAY", "0.01", "weaker decay: the model is small and underfits"),
    ("HEATMAP_WEIGHT", "2.0", "heatmaps carry the shapes' positions: lean on them more"),
    ("EMBED_DIM", "96", "a wider shared space separates 1,000 phrases better"),
    ("VIT_DEPTH", "3", "a shallower encoder trains faster in 300 steps"),
    ("BATCH_SIZE", "96", "between 64 and 128: more negatives at less cost per step"),
    ("LEARNING_RATE", "2e-3", "a slightly lower peak after the temperature fix"),
    ("LOGIT_SCALE_MAX", "3.0", "a looser but still bounded temperature"),
    ("WARMUP_STEPS", "45", "a little less warmup than the baseline"),
    ("WEIGHT_DECAY", "0.03", "a little less decay than the baseline"),
    ("HEATMAP_WEIGHT", "0.75", "a little less weight on the auxiliary loss"),
    ("EMBED_DIM", "48", "a narrower model trains more steps' worth in the same time"),
    ("LEARNING_RATE", "4e-3", "a slightly higher peak LR"),
    ("VIT_DEPTH", "5", "one more block in the image encoder"),
    ("HEATMAP_WEIGHT", "1.5", "a little more weight on the auxiliary loss"),
    ("WEIGHT_DECAY", "0.07", "a little more decay than the baseline"),
    ("WARMUP_STEPS", "80", "a little more warmup than the baseline"),
    ("BATCH_SIZE", "80", "a few more negatives per step"),
    ("LOGIT_SCALE_MAX", "2.0", "a moderately looser temperature clamp"),
    ("EMBED_DIM", "80", "a slightly wider shared space"),
]


class EclipModel:
    """Writes the tool-use replies of the fake Messages API for examples/eclip."""

    def __call__(self, req: Received) -> Reply:
        system = req.body["system"]
        files = system[-1]["text"] if isinstance(system, list) else system
        code = files.split("```", 2)[1]  # the editable train.py, as the incumbent has it
        asked = self._count(req.user_text)
        tried = req.user_text  # the digest names every earlier draft by its title
        drafts = []
        for name, value, why in IDEAS:
            m = re.search(rf"^{name} = (\S+)(.*)$", code, re.M)
            title = f"{name} → {value}"
            if m is None or m.group(1) == value or title in tried:
                continue
            drafts.append(
                {
                    "title": title,
                    "hypothesis": why,
                    "expected_effect": "lower mean_rank",
                    "edits": [
                        {
                            "path": "train.py",
                            "search": m.group(0),
                            "replace": f"{name} = {value}{m.group(2)}",
                        }
                    ],
                }
            )
            if len(drafts) == asked:
                break
        # Realistic accounting: the system blocks come from the prompt cache after the first.
        cached = len(json.dumps(system)) // 4
        return drafts_reply(
            drafts,
            use=usage(
                input_tokens=len(req.user_text) // 4,
                output_tokens=180 * len(drafts) + 60,
                cache_read=cached,
            ),
        )

    @staticmethod
    def _count(text: str) -> int:
        m = re.search(r"Propose (\d+) diverse drafts", text)
        return int(m.group(1)) if m else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-candidates", type=int, default=24)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--proposers", default=",".join(PROPOSERS))
    ap.add_argument(
        "--target", type=Path, default=TARGET, help="where the copy of the example goes"
    )
    args = ap.parse_args()
    target = args.target.resolve()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    copy_example(target)
    api = FakeAnthropic().start()
    api.respond = EclipModel()
    os.environ["ANTHROPIC_BASE_URL"] = api.url
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-local-fake")
    kinds = args.proposers.split(",")
    try:
        for kind in kinds:
            print(f"== {kind}", flush=True)
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
                    "60",
                ]
            )
            if code != 0:
                return code
    finally:
        api.stop()
    store = open_store(f"sqlite:///{target / '.farm' / 'farm.db'}")
    print()
    print(f"examples/eclip, {args.slots} slots, {args.max_candidates} candidates per proposer")
    print()
    print("| campaign | " + " | ".join(PROPOSER_COLUMNS) + " | best mean_rank (start) |")
    print("|---|" + "---|" * (len(PROPOSER_COLUMNS) + 1))
    for kind in kinds:
        camp = store.get_campaign(kind)
        inc = store.get_incumbent(kind)
        start = camp.baseline_metric if camp else None
        best = f"{inc.metric:.4g} ({start:.4g})" if inc.metric and start else "—"
        for row in proposer_rows(store, kind):
            print(f"| {kind} | " + " | ".join(row.cells()) + f" | {best} |")
    print(f"\nfake Messages API: {len(api.requests)} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
