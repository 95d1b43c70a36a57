"""What training may hand to the evaluator: declared artifacts that are data, not code.

Before a protected `evaluate` step, the evaluator gets a fresh checkout of the commit plus
the files training left that `artifacts` (farm.toml) declares. A declared file may still be
code in disguise: a pickle runs whatever callable its opcodes name when loaded (so does
`torch.load` without `weights_only`, and `numpy.load(allow_pickle=True)`). `serialised_code`
reads a file's opcodes without loading it and names what loading it would call, unless it
is only what a plain tensor state dict needs (the globals `torch.load(weights_only=True)`
allows). Text, safetensors, plain numpy arrays and the like are not pickles and pass.
"""

from __future__ import annotations

import fnmatch
import pickletools
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, Any

# Files Python or the dynamic loader would run if they sat beside the evaluator (a `json.py`
# shadows the standard library). `.pth` is not one: it runs only from site-packages, and it is
# PyTorch's usual checkpoint suffix.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so")
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
# What a tensor state dict saved by torch.save needs, beside plain containers and numbers.
SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("collections", "Counter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
}
_SAFE_TORCH = re.compile(r"[A-Za-z0-9]*Storage|u?int\d+|float\d+|bfloat16|complex\d+|bool|half")
_IMPORTABLE = re.compile(r"[A-Za-z_][\w.]*")
_STRINGS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


def declared(path: str, patterns: Iterable[str]) -> bool:
    """Whether `path` (relative, '/'-separated) is an artifact: a pattern matches it or one
    of the directories it is in (`checkpoints` declares everything under it)."""
    pure = PurePosixPath(path)
    names = [path, *(str(p) for p in pure.parents if str(p) != ".")]
    return any(fnmatch.fnmatchcase(n, pat.rstrip("/")) for pat in patterns for n in names)


def serialised_code(path: Path) -> str:
    """Why loading `path` could run code ("" when no loader would): the first callable a
    pickle in it names beyond a tensor state dict's, a numpy array of Python objects, or a
    code suffix."""
    if path.name.endswith(CODE_SUFFIXES):
        return "it is code (by its suffix)"
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
        f.seek(0)
        if head.startswith(ZIP_MAGIC):
            return _zip_code(f)
        if head == NPY_MAGIC:
            return _npy_code(f)
        return _pickle_code(f)


def _zip_code(f: IO[bytes]) -> str:
    """A torch.save checkpoint or an .npz: each pickle or .npy member inside."""
    try:
        with zipfile.ZipFile(f) as archive:
            for name in archive.namelist():
                if name.endswith(".pkl") or name.endswith(".npy"):
                    with archive.open(name) as member:
                        loader = _npy_code if name.endswith(".npy") else _pickle_code
                        why = loader(member)
                        if why:
                            return f"{name}: {why}"
    except (zipfile.BadZipFile, OSError, ValueError):
        return ""  # not a zip any loader would open
    return ""


def _npy_code(f: IO[bytes]) -> str:
    header = f.read(1024).decode("latin-1", errors="replace")
    descr = re.search(r"'descr':\s*'([^']*)'", header)
    if descr and "O" in descr.group(1):
        return "a numpy array of Python objects (loading it unpickles them)"
    return ""


def _pickle_code(f: IO[bytes]) -> str:
    """The first global a pickle stream in `f` names that is not SAFE_GLOBALS' ("" if none).

    Every callable a pickle can run comes from GLOBAL, STACK_GLOBAL, INST or the extension
    registry, so checking those covers REDUCE, NEWOBJ, OBJ and BUILD too. Several pickles in
    a row are all read (a loader may call load() again); the scan ends where the bytes stop
    being a pickle, where a loader would fail.
    """
    while True:
        stack: list[Any] = []  # what was pushed, as far as it matters: strings, else None
        memo: dict[int, Any] = {}
        try:
            for op, arg, _ in pickletools.genops(f):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    why = _unsafe(module, attr)
                elif name == "STACK_GLOBAL":
                    why = _unsafe(*stack[-2:]) if len(stack) >= 2 else _unsafe(None, None)
                elif name.startswith("EXT"):
                    why = "a callable from the copyreg extension registry"
                else:
                    why = ""
                if why:
                    return why
                if name in _STRINGS:
                    stack.append(arg)
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                elif name in _MEMO_PUT:
                    memo[int(arg or 0)] = stack[-1] if stack else None
                elif name in _MEMO_GET:
                    stack.append(memo.get(int(arg or 0)))
                elif name not in ("PROTO", "FRAME", "STOP"):
                    stack.append(None)
        except (ValueError, EOFError, OverflowError, UnicodeDecodeError):
            return ""  # not (or no longer) a pickle
        if not f.read(1):
            return ""
        f.seek(-1, 1)


def _unsafe(module: object, attr: object) -> str:
    if not isinstance(module, str) or not isinstance(attr, str):
        return "a global whose name the scan cannot read"
    if not (_IMPORTABLE.fullmatch(module) and _IMPORTABLE.fullmatch(attr)):
        return ""  # nothing any loader could import: a text file, not a pickle
    if (module, attr) in SAFE_GLOBALS:
        return ""
    if module == "torch" and _SAFE_TORCH.fullmatch(attr):
        return ""
    if module == "torch._utils" and attr.startswith("_rebuild_"):
        return ""
    return f"a pickle that calls {module}.{attr} when loaded"
