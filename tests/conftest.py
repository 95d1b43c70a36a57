"""Fixtures shared by every test package: real git targets and a real local Ray."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic
from helpers import SECRET, TOY_TOML, TOY_TRAIN, MakeTarget, git

from farm.store import VOLATILE_ENV

# The machine's Redis (FARM_TEST_REDIS_URL) keeps no AOF: every farm role a test starts,
# here or in a subprocess, accepts that. The tests of the refusal itself leave it out.
os.environ[VOLATILE_ENV] = "1"


@pytest.fixture
def make_target(tmp_path: Path) -> MakeTarget:
    """A committed git repo with the given files (defaults: the toy target)."""

    def make(
        files: dict[str, str] | None = None,
        *,
        toml: str = TOY_TOML,
        extra_toml: str = "",
        name: str = "target",
    ) -> Path:
        root = tmp_path / name
        root.mkdir()
        contents = {
            "train.py": TOY_TRAIN,
            "prepare.py": "# FIXED: evaluation and data\n",
            "program.md": "Lower the loss.\n",
            "farm.toml": textwrap.dedent(toml) + textwrap.dedent(extra_toml),
        }
        contents.update(files or {})
        for rel, text in contents.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "baseline")
        return root

    return make


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One real local Ray instance for the session, sized like the CI machine.

    Its workers inherit this environment: a per-session code cache, and a fake API key.
    """
    import ray

    os.environ["FARM_CACHE_DIR"] = str(tmp_path_factory.mktemp("farm-cache"))
    os.environ["ANTHROPIC_API_KEY"] = SECRET
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    """A local Messages API on an ephemeral port; tests queue its replies."""
    server = FakeAnthropic().start()
    yield server
    server.stop()
