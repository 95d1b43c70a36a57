"""Fixtures for farm/ tests: run a whole campaign in this process on the session's Ray."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TextIO

import pytest
from helpers import Finished, RunCampaign

from farm.campaign import RunOptions, prepare, run
from farm.config import load_config
from farm.gitops import Repo
from farm.store import Store, default_url, open_store
from proposer.registry import make_proposer


@pytest.fixture
def run_campaign(ray_local: None) -> RunCampaign:
    stores: list[Store] = []

    def go(
        target: Path,
        *,
        slots: int = 2,
        max_candidates: int | None = None,
        store_url: str | None = None,
        out: TextIO | None = None,
    ) -> Finished:
        cfg = load_config(target)
        store = open_store(store_url or default_url(target))
        stores.append(store)
        prepare(target, cfg, store, check_command=True)
        captured = io.StringIO()
        code = run(
            store=store,
            repo=Repo(target),
            cfg=cfg,
            proposer=make_proposer(cfg.proposer, target=target),
            opts=RunOptions(slots=slots, max_candidates=max_candidates, progress_every_s=1e9),
            out=out or captured,
        )
        return Finished(code, captured.getvalue(), store, cfg, Repo(target))

    return go
