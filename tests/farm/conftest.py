"""Fixtures for farm/ tests: run a whole campaign in this process on the session's Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Finished, RunCampaign, run_to_end


@pytest.fixture
def run_campaign(ray_local: None) -> Iterator[RunCampaign]:
    finished: list[Finished] = []

    def go(target: Path, **options: object) -> Finished:
        done = run_to_end(target, **options)  # type: ignore[arg-type]
        finished.append(done)
        return done

    yield go
    for done in finished:
        done.store.close()
