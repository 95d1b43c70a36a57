"""Which process holds a claim or a call, and whether that process is gone.

A role's records name the process that holds them (a dispatcher's trial claims, a
proposer's calls in flight), so that the role restarted on the same host takes back at
once what a process that no longer exists held, rather than wait for a lease to lapse or
a call to time out.
"""

from __future__ import annotations

import os
import socket
import uuid


def process_id() -> str:
    """host:pid:nonce of this process (the nonce tells apart two holders in one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def gone_here(holder: str) -> bool:
    """Whether `holder` (a `process_id`) names a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
