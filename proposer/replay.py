"""The replay proposer: drafts read from a JSONL file, handed out in file order.

One JSON object per line:

    {"title": "...", "hypothesis": "...", "expected_effect": "...",
     "edits": [{"path": "train.py", "search": "...", "replace": "..."}]}

The whole file is read and checked when the proposer is made, so a bad line stops the
campaign before it starts. Drafts whose edit hash is already in the ledger are skipped,
so a resumed campaign does not replay its past.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

from farm.errors import ConfigError
from farm.records import Draft, Edit, edit_hash
from proposer.base import ProposalContext, Proposer

_DRAFT_KEYS = {"title": True, "hypothesis": False, "expected_effect": False, "edits": True}
_EDIT_KEYS = ("path", "search", "replace")


class ReplayProposer(Proposer):
    name = "replay"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._drafts = _read(path)
        self._next = 0  # index of the next draft to hand out

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        batch_id = f"replay-{uuid.uuid4().hex[:8]}"
        out: list[Draft] = []
        while len(out) < n and self._next < len(self._drafts):
            draft = self._drafts[self._next]
            self._next += 1
            if edit_hash(draft.edits) not in ctx.seen_hashes:
                # A copy: the caller owns what it gets and may annotate it.
                out.append(dataclasses.replace(draft, edits=list(draft.edits), batch_id=batch_id))
        return out


def _read(path: Path) -> list[Draft]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"replay file {path} not found: check proposer.replay_file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"replay file {path} cannot be read: {e}") from None
    drafts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                drafts.append(_parse(line))
            except ValueError as e:  # json.JSONDecodeError is a ValueError too
                raise ConfigError(f"{path}:{number}: {e}") from None
    if not drafts:
        raise ConfigError(f"replay file {path} holds no drafts: add one JSON object per line")
    return drafts


def _parse(line: str) -> Draft:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object with title, hypothesis and edits")
    unknown = sorted(set(obj) - set(_DRAFT_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(_DRAFT_KEYS)})")
    for key, required in _DRAFT_KEYS.items():
        if required and key not in obj:
            raise ValueError(f"missing key {key!r}")
        if key != "edits" and not isinstance(obj.get(key, ""), str):
            raise ValueError(f"{key!r} must be a string")
    edits = obj["edits"]
    if not isinstance(edits, list) or not edits:
        raise ValueError("'edits' must be a non-empty list of {path, search, replace} objects")
    return Draft(
        title=obj["title"],
        hypothesis=obj.get("hypothesis", ""),
        expected_effect=obj.get("expected_effect", ""),
        edits=[_parse_edit(i, e) for i, e in enumerate(edits, start=1)],
        proposer="replay",
        strategy="file",
    )


def _parse_edit(number: int, obj: Any) -> Edit:
    if not isinstance(obj, dict) or set(obj) != set(_EDIT_KEYS):
        raise ValueError(f"edit {number} must be an object with exactly {', '.join(_EDIT_KEYS)}")
    if not all(isinstance(obj[k], str) for k in _EDIT_KEYS):
        raise ValueError(f"edit {number}: {', '.join(_EDIT_KEYS)} must be strings")
    return Edit(obj["path"], obj["search"], obj["replace"])
