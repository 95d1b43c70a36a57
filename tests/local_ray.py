"""Real Ray nodes started by `ray start` for tests, beside anyone else's Ray on this machine.

Each node runs in its own session (process group) with ports of its own, so a test stops
exactly the nodes it started (`kill_group`), never with `ray stop`, which stops every Ray
instance on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping

from helpers import free_port


def node_ports() -> list[str]:
    """`ray start` flags for the ports that otherwise default to fixed numbers: another Ray
    on this machine holds the defaults, and a head without its job agent refuses
    `ray job submit`."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def ray_env(path_first: str) -> dict[str, str]:
    """The environment of a token-auth test cluster and its clients, `path_first` on PATH
    (job entrypoints resolve `farm` and `python` through the cluster's PATH)."""
    env = dict(os.environ)
    env["PATH"] = f"{path_first}:{env['PATH']}"
    env["RAY_AUTH_MODE"] = "token"  # clients of a token-auth cluster must say so
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def kill_group(p: subprocess.Popen[bytes]) -> None:
    """Stop a node started with start_new_session=True, and everything it started: what is
    left of the group once its leader exits (a draining raylet, say) is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def alive_nodes(python: str, env: Mapping[str, str], gcs: str) -> list[dict[str, object]]:
    """[{id, labels}] of the live nodes, asked through `python`'s Ray; [] while unreachable."""
    code = (
        f"import json, ray; ray.init(address={gcs!r}, logging_level='ERROR');"
        "print(json.dumps([{'id': n['NodeID'], 'labels': n.get('Labels', {})}"
        " for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run(
        [python, "-c", code], env=dict(env), capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        return []
    nodes: list[dict[str, object]] = json.loads(out.stdout.strip().splitlines()[-1])
    return nodes


def head_address(port: int) -> str:
    # Ray binds the node's own address, not loopback: find it as Ray does.
    from ray._private.services import get_node_ip_address

    return f"{get_node_ip_address()}:{port}"


def wait_for_nodes(
    python: str, env: Mapping[str, str], gcs: str, n: int, timeout: float = 90
) -> list[dict[str, object]]:
    """Wait until the cluster at `gcs` has `n` live nodes; they are returned."""
    port = int(gcs.rsplit(":", 1)[1])
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            nodes = alive_nodes(python, env, gcs)
            if len(nodes) >= n:
                return nodes
        time.sleep(1)
    raise AssertionError(f"{n} Ray node(s) did not come up at {gcs} within {timeout:.0f} s")
