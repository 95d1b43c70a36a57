"""The main job: a local campaign on the bundled eCLIP example, no API key needed.

Copies examples/eclip to runs/eclip as a git repo of its own (once), runs `farm run` on it
with 2 slots and the mutate proposer, then prints `farm status` and writes the ledger as
runs/eclip-results.tsv. Run it again to resume an interrupted campaign. Extra arguments
go to `farm run` (e.g. `--max-candidates 40`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from farm.cli import main as farm

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "eclip"
TARGET = ROOT / "runs" / "eclip"
# Every knob of train.py x2 and x0.5 (mutate tries those first), the planted clamp among
# them; at budget_s = 90 a trial takes about that, so the demo takes about 30 min.
MAX_CANDIDATES = 16


def copy_example(target: Path) -> bool:
    """examples/eclip as a git repo of its own at `target`, once; True if made now."""
    if (target / ".git").exists():
        return False
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".cache", "__pycache__"))
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["commit", "-q", "-m", "eCLIP example: baseline"],
    ):
        subprocess.run(
            ["git", "-c", "user.name=farm-demo", "-c", "user.email=demo@localhost", *args],
            cwd=target,
            check=True,
            capture_output=True,
        )
    return True


def main() -> int:
    # Trials run `python train.py` through PATH: make it this environment's python, with torch.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if copy_example(TARGET):
        print(
            f"demo: copied {EXAMPLE.relative_to(ROOT)} to {TARGET.relative_to(ROOT)} (a git repo)"
        )
    args = sys.argv[1:] or ["--max-candidates", str(MAX_CANDIDATES)]
    code = farm(["run", str(TARGET), "--slots", "2", *args])
    if code != 0:
        return code
    farm(["status", str(TARGET)])
    tsv = TARGET.parent / "eclip-results.tsv"
    farm(["export", str(TARGET), "--tsv", "-o", str(tsv)])
    print(f"demo: ledger written to {tsv.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
