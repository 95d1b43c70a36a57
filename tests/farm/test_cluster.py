"""farm on a real two-node Ray cluster started by `ray start`: GPU-node pinning, each role
as its own process (with a dispatcher killed mid-trial), and `ray job submit`.

The cluster is this module's own (its own temp dir and process groups) and only it is
stopped at the end; the session's in-process Ray and anyone else's are left alone.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TOY_TOML, MakeTarget, free_port, git
from local_ray import head_address, kill_group, node_ports, ray_env, wait_for_nodes

from farm.campaign import prepare
from farm.config import load_config
from farm.gitops import best_branch
from farm.records import Campaign, Outcome, Trial, TrialKind, TrialResult, TrialState
from farm.store import Store, open_store

VENV_BIN = Path(sys.executable).parent
# The tests' own Redis database (flushed around each test), never another index.
ROLES_DB = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

SLOW_TRAIN = """\
import os
import random
import time

LR = 0.5  # the loss is lowest at LR = 2
WD = 0.1  # a second knob that does nothing

time.sleep(1.0)
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
print(f"loss: {(LR - 2.0) ** 2 + rng.gauss(0, 0.05):.6f}")
"""


@dataclass
class Cluster:
    gcs: str  # host:port for ray.init / --ray-address
    dashboard: str  # http://host:port for ray job submit
    gpu_node: str  # node id of the node labelled gpu-model=rtx4090
    other_node: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = ray_env(str(VENV_BIN))
    port, dash = free_port(), free_port()
    # A short path of its own: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="farm-ray-", dir="/tmp")
    procs = [
        subprocess.Popen(
            [
                str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}",
                "--num-cpus=2", '--resources={"rtx4090": 2}', "--labels=gpu-model=rtx4090",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                *node_ports(),
            ],
            env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        gcs = head_address(port)
        wait_for_nodes(sys.executable, env, gcs, 1)
        procs.append(
            subprocess.Popen(
                [
                    str(VENV_BIN / "ray"), "start", "--block", f"--address={gcs}",
                    "--num-cpus=1", '--resources={"a100": 1}', "--labels=gpu-model=a100",
                    "--disable-usage-stats", *node_ports(),
                ],
                env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        nodes = {
            str(dict(n["labels"]).get("gpu-model")): str(n["id"])  # type: ignore[call-overload]
            for n in wait_for_nodes(sys.executable, env, gcs, 2)
        }
        yield Cluster(
            gcs=gcs,
            dashboard=f"http://127.0.0.1:{dash}",
            gpu_node=nodes["rtx4090"],
            other_node=nodes["a100"],
            env=env,
        )
    finally:
        for p in reversed(procs):
            kill_group(p)
        shutil.rmtree(temp_dir, ignore_errors=True)


def farm(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_BIN / "farm"), *args],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def roles_store() -> Iterator[Store]:
    store = open_store(ROLES_DB)
    _flush(ROLES_DB)
    yield store
    _flush(ROLES_DB)
    store.close()


def _flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


FAST_TRAIN = SLOW_TRAIN.replace("time.sleep(1.0)", "time.sleep(0.2)")


def _pinned_target(make_target: MakeTarget, resources: str, name: str) -> Path:
    return make_target({"train.py": FAST_TRAIN}, toml=TOY_TOML + resources, name=name)


@pytest.mark.parametrize(
    ("resources", "node"),
    [
        ("[resources]\ncustom = { rtx4090 = 1 }\n", "gpu_node"),
        ('[resources]\nlabels = { gpu-model = "a100" }\n', "other_node"),
    ],
)
def test_trials_land_only_on_the_matching_node(
    cluster: Cluster, make_target: MakeTarget, resources: str, node: str
) -> None:
    target = _pinned_target(make_target, resources, name=f"pin-{node}")
    p = farm(cluster, "run", str(target), "--ray-address", cluster.gcs, "--max-candidates", "2")
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 0, out
    store = open_store(f"sqlite:///{target / '.farm' / 'farm.db'}")
    nodes = {t.result.node for t in store.list_trials("default") if t.result}
    store.close()
    assert nodes == {getattr(cluster, node)}


def test_no_matching_node_is_said_at_once(cluster: Cluster, make_target: MakeTarget) -> None:
    target = _pinned_target(make_target, "[resources]\ncustom = { h100 = 1 }\n", name="pin-none")
    p = farm(cluster, "run", str(target), "--ray-address", cluster.gcs)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2
    assert "no node of the Ray cluster can run a trial needing" in out
    assert "'h100': 1.0" in out and "gpu-model" in out  # it lists what the nodes have


def test_roles_as_processes_survive_a_dispatcher_killed_mid_trial(
    cluster: Cluster, make_target: MakeTarget, roles_store: Store
) -> None:
    target = make_target({"train.py": SLOW_TRAIN}, name="roles")
    store = ["--store", ROLES_DB]
    controls = [farm(cluster, "control", str(target), *store, "--idle-exit", "4") for _ in "ab"]
    works = [
        farm(
            cluster, "work", str(target), *store, "--ray-address", cluster.gcs, "--slots", "1",
            "--lease", "3", "--idle-exit", "6",
        )
        for _ in "ab"
    ]  # fmt: skip
    propose = farm(cluster, "propose", str(target), *store, "--max-candidates", "5")
    victim = works[0]
    deadline = time.time() + 120
    killed_holding: list[str] = []
    while time.time() < deadline and not killed_holding:
        if roles_store.get_campaign("default") is not None:
            running = roles_store.list_trials("default", states={TrialState.RUNNING})
            mine = [t.id for t in running if f":{victim.pid}:" in t.worker]
            done = roles_store.count_trials("default")[TrialState.DONE]
            if mine and done >= 2:
                os.killpg(victim.pid, signal.SIGKILL)
                killed_holding = mine
        time.sleep(0.1)
    if not killed_holding:
        for p in [*controls, *works, propose]:
            kill_group(p)  # type: ignore[arg-type]
        logs = "\n---\n".join(p.communicate()[0] for p in [*controls, *works, propose])
        raise AssertionError(f"the first dispatcher never held a trial:\n{logs}")

    outputs = []
    for p in [*controls, works[1], propose]:
        out, _ = p.communicate(timeout=240)
        outputs.append(out)
    victim.wait()
    # One driver per campaign: the second controller was refused, naming the first.
    codes = sorted(p.returncode for p in controls)
    assert codes == [0, 2], outputs[:2]
    refused = outputs[[p.returncode for p in controls].index(2)]
    assert "is driven by farm control (" in " ".join(refused.split())
    assert all(p.returncode == 0 for p in (works[1], propose)), outputs[2:]

    trials = roles_store.list_trials("default")
    assert all(t.state is TrialState.DONE and t.result is not None for t in trials), outputs
    for trial_id in killed_holding:  # re-run elsewhere after the lease lapsed
        t = roles_store.get_trial("default", trial_id)
        assert t is not None and t.deliveries >= 2 and f":{victim.pid}:" not in t.worker
    cands = roles_store.list_candidates("default")
    assert len(cands) == 5 and all(c.state.is_finished() for c in cands)
    decisions = roles_store.list_decisions("default")
    assert collections.Counter(d.candidate_id for d in decisions) == {c.id: 1 for c in cands}
    # One incumbent history: every keep moved it from the one before.
    kept = [d for d in decisions if d.kind.value == "kept"]
    assert [d.incumbent_before for d in kept[1:]] == [d.incumbent_after for d in kept[:-1]]
    inc = roles_store.get_incumbent("default")
    assert git(target, "rev-parse", best_branch("default")).strip() == inc.sha


def test_ray_job_submit_runs_a_campaign(
    cluster: Cluster, make_target: MakeTarget, roles_store: Store, tmp_path: Path
) -> None:
    target = make_target({"train.py": FAST_TRAIN}, name="job")
    # Ray's working_dir upload leaves .git out: ship the target as a git bundle and clone
    # it in the job, as scripts/submit.sh does.
    upload = tmp_path / "upload"
    upload.mkdir()
    git(target, "bundle", "create", str(upload / "target.bundle"), "--all")
    submit = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard,
        "--working-dir", str(upload), "--", "bash", "-c",
        # Clone outside the working_dir: Ray replaces that directory when the driver connects.
        f"d=$(mktemp -d) && git clone -q target.bundle $d/t && farm run $d/t --store {ROLES_DB} "
        "--max-candidates 3",
    ]  # fmt: skip
    for _ in range(30):  # a fresh head's job agent takes a few seconds to come up
        job = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in job.stderr:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "succeeded" in (job.stdout + job.stderr).lower()
    trials = roles_store.list_trials("default")
    assert len(trials) >= 3 + 3 and all(t.state is TrialState.DONE for t in trials)
    assert len(roles_store.list_decisions("default")) == 3


def test_a_rerun_goes_to_the_class_its_reference_ran_on_while_it_has_nodes(
    cluster: Cluster, make_target: MakeTarget, roles_store: Store
) -> None:
    target = make_target({"train.py": FAST_TRAIN}, name="prefer")
    camp = prepare(target, load_config(target), roles_store, check_command=False)
    # Both nodes here have the same hardware: the store says they differ, as GPU models
    # would, through the results of a baseline that ran one class on each node, and a third
    # class on a node that has left the cluster since.
    gone = "ab" * 28
    for i, (hardware, node) in enumerate(
        [("rtx4090", cluster.gpu_node), ("a100", cluster.other_node), ("h100", gone)] * 2
    ):
        roles_store.enqueue_trial(_trial(camp, f"base-{i}", TrialKind.BASELINE))
        result = TrialResult(trial_id=f"base-{i}", outcome=Outcome.OK, metric=2.25)
        result.hardware, result.node = hardware, node
        roles_store.record_result("default", result)

    def work(prefer: str, *ids: str) -> set[str]:
        for trial_id in ids:
            roles_store.enqueue_trial(_trial(camp, trial_id, TrialKind.CONFIRM, prefer=prefer))
        p = farm(
            cluster, "work", str(target), "--store", ROLES_DB, "--ray-address", cluster.gcs,
            "--slots", "1", "--idle-exit", "3",
        )  # fmt: skip
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
        runs = [roles_store.get_trial("default", t) for t in ids]
        assert all(t and t.result and t.result.outcome is Outcome.OK for t in runs), out
        return {t.result.node for t in runs if t and t.result}

    # Each on the a100 node (Ray alone would keep them on the driver's node).
    assert work("a100", "c1-g0-confirm0", "c2-g0-confirm0") == {cluster.other_node}
    # A class with no node left: they run where there is room rather than wait for it.
    assert work("h100", "c3-g0-confirm0", "c4-g0-confirm0") <= {
        cluster.other_node,
        cluster.gpu_node,
    }


def _trial(camp: Campaign, trial_id: str, kind: TrialKind, *, prefer: str = "") -> Trial:
    return Trial(
        id=trial_id,
        campaign=camp.id,
        kind=kind,
        commit_sha=camp.start_sha,
        base_sha=camp.start_sha,
        seed=len(trial_id),
        prefer=prefer,
    )
