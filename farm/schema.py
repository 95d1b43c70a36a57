"""The schema machinery of farm.toml: how a key is declared, read, checked and listed.

farm/config.py declares every key once, as a dataclass field made by `setting`: its type
(the annotation), default, unit, range and one-line help, and for a z-value of the merge
rule the error rate that sets it. `Reader` builds the dataclasses from a TOML table
(strict: a farm.toml, whose unknown keys and bad values are refused with "<file>: [section]
key: what is wrong; what to write instead") or from a stored snapshot (lenient). `keys`
lists the declarations for `farm init`'s template and docs/config.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, get_type_hints

from farm.errors import ConfigError


class Tier(enum.StrEnum):
    INIT = "init"  # `farm init` lists it (commented, at its default) for the user to set
    USER = "user"  # a setting a user may want; docs/config.md lists it
    ADVANCED = "advanced"  # follows from the others; set it only to override


@dataclass(frozen=True)
class Rate:
    """The error rate that sets a z-value: z = Φ⁻¹(1 − rate), rounded to 6 decimals."""

    key: str
    doc: str
    tier: Tier = Tier.USER


@dataclass(frozen=True)
class Spec:
    """What the schema knows of one key besides its type and default."""

    doc: str
    unit: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    tier: Tier = Tier.USER
    example: str = ""  # a TOML value `farm init` suggests where the default is empty
    rate: Rate | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    unit: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    tier: Tier = Tier.USER,
    example: str = "",
    rate: Rate | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """Declare one key: a dataclass field whose metadata is its Spec."""
    spec = Spec(doc, unit, ge, gt, le, lt, tier, example, rate)
    return field(default=default, default_factory=factory, metadata={"spec": spec})


_NORMAL = NormalDist()
RATE_MAX = 0.5  # the rate of z = 0: a gate that any gain passes


def z_of(rate: float) -> float:
    """The z-value an error rate gives: Φ⁻¹(1 − rate), to 6 decimals (so the default rates,
    1 − Φ(z) of today's z, give that z exactly and not 1.4999999999999998)."""
    return round(-_NORMAL.inv_cdf(rate), 6) + 0.0


def rate_of(z: float) -> float:
    """The one-sided error rate of a z-value: 1 − Φ(z)."""
    return _NORMAL.cdf(-z)


def where(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def show(value: Any) -> str:
    """A value as TOML spells it (near enough for a message)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def range_text(spec: Spec) -> str:
    parts = [
        f"{op} {show(bound)}"
        for op, bound in ((">=", spec.ge), (">", spec.gt), ("<=", spec.le), ("<", spec.lt))
        if bound is not None
    ]
    return " and ".join(parts)


def _spec(f: dataclasses.Field[Any]) -> Spec:
    # A field declared without `setting` loads; test_config.py asks for its help line.
    return f.metadata.get("spec", Spec(""))


@dataclass
class Reader:
    """Builds a section's dataclass from its table; `strict` (a farm.toml) also refuses
    unknown keys and values out of range, lenient (a stored snapshot) leaves them."""

    root: type  # the whole file's dataclass (an unknown key is looked for in its tables)
    source: str
    strict: bool

    def fail(self, section: str, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where(section, key)}: {why}")

    def build(self, cls: type, raw: Any, section: str) -> Any:
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.source}: [{section}]: not a table; write [{section}] key = …")
        hints, fields = _schema_of(cls)
        raw = self._rates(fields, raw, section)
        unknown = sorted(set(raw) - set(fields))
        if unknown and self.strict:
            known = sorted([*fields, *(r.key for f in fields.values() if (r := _spec(f).rate))])
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75)
            homes = [k.table for k in keys(self.root) if k.name == unknown[0] and k.table]
            hint = f"did you mean {close[0]!r}? " if close else ""
            if homes and f"[{section}]" not in homes:
                hint = f"it belongs under {homes[0]}, not here; "
            raise self.fail(
                section, unknown[0], f"unknown key; {hint}write one of {', '.join(known)}"
            )
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in raw and required and self.strict:
                raise self.fail(section, name, f"missing; write {name} = … ({_spec(f).doc})")
            if name not in raw and required:  # a snapshot without it (tests, tools): empty
                raw[name] = _origin(hints[name])()
        kwargs = {
            name: self.value(hints[name], value, _spec(fields[name]), section, name)
            for name, value in raw.items()
            if name in fields
        }
        return cls(**kwargs)

    def _rates(
        self, fields: dict[str, dataclasses.Field[Any]], raw: dict[str, Any], section: str
    ) -> dict[str, Any]:
        """`alpha = 0.05` is `z = Φ⁻¹(0.95)`: an error rate written as the z it sets."""
        raw = dict(raw)
        for name, f in fields.items():
            rate = _spec(f).rate
            if rate is None or rate.key not in raw:
                continue
            value = raw.pop(rate.key)
            if name in raw:
                raise self.fail(
                    section,
                    name,
                    f"set by {rate.key} too; keep one (a z overrides the rate it follows from)",
                )
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not (ok and 0 < value <= RATE_MAX):
                raise self.fail(
                    section,
                    rate.key,
                    f"{show(value)} is not an error rate; write a number > 0 and <= "
                    f"{RATE_MAX} ({rate.doc})",
                )
            raw[name] = z_of(value)
        return raw

    def value(self, tp: Any, value: Any, spec: Spec, section: str, key: str) -> Any:
        # `X | None`: TOML has no null, so only a stored snapshot holds a None.
        args = getattr(tp, "__args__", ())
        if len(args) == 2 and type(None) in args:
            if value is None:
                return None
            tp = next(a for a in args if a is not type(None))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.build(tp, value, f"{section}.{key}" if section else key)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            try:
                return tp(value)
            except ValueError:
                choices = ", ".join(json.dumps(c.value) for c in tp)
                raise self.fail(
                    section, key, f"{show(value)} is not a choice; write one of {choices}"
                ) from None
        origin = getattr(tp, "__origin__", None)
        if origin is list:
            (item,) = tp.__args__
            if not isinstance(value, list):
                raise self.fail(
                    section, key, f"{show(value)} is not a list; write [{_kind(item)}, …]"
                )
            if isinstance(item, type) and dataclasses.is_dataclass(item):  # [[section.key]]
                return [
                    self.build(item, v, f"{section}.{key} #{i + 1}") for i, v in enumerate(value)
                ]
            return [self.scalar(item, v, spec, section, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            _, item = tp.__args__
            if not isinstance(value, dict):
                raise self.fail(section, key, f"not a table; write {key} = {{ name = value }}")
            if isinstance(item, type) and dataclasses.is_dataclass(item):  # [section.key."name"]
                return {
                    str(k): self.build(item, v, f"{section}.{key}.{k}") for k, v in value.items()
                }
            return {
                str(k): self.scalar(item, v, spec, section, f"{key}.{k}") for k, v in value.items()
            }
        return self.scalar(tp, value, spec, section, key)

    def scalar(self, tp: Any, value: Any, spec: Spec, section: str, key: str) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {
            bool: isinstance(value, bool),
            int: number and isinstance(value, int),
            float: number and math.isfinite(value),
            str: isinstance(value, str),
        }[tp]
        about = f"{spec.doc}, in {spec.unit}" if spec.unit else spec.doc
        if not ok:
            raise self.fail(
                section, key, f"{show(value)} is not a {_kind(tp)}; write a {_kind(tp)} ({about})"
            )
        if tp is float:
            value = float(value)
        if self.strict and number and not _in_range(value, spec):
            raise self.fail(
                section,
                key,
                f"{show(value)} is out of range; write a {_kind(tp)} {range_text(spec)} ({about})",
            )
        return value


@functools.cache
def _schema_of(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A section's types and fields (read once: every status line reads a stored config)."""
    return get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _origin(tp: Any) -> Any:
    return getattr(tp, "__origin__", tp)


def _in_range(value: float, spec: Spec) -> bool:
    return (
        (spec.ge is None or value >= spec.ge)
        and (spec.gt is None or value > spec.gt)
        and (spec.le is None or value <= spec.le)
        and (spec.lt is None or value < spec.lt)
    )


def _kind(tp: Any) -> str:
    return {int: "whole number", float: "number", str: "string", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


@dataclass(frozen=True)
class Key:
    """One key as a farm.toml spells it: its table, name, type, default and Spec."""

    table: str  # its table's header: "" at the top, "[merge]", "[[proposer.params]]", …
    name: str
    type: Any
    default: Any  # dataclasses.MISSING where the key is required
    spec: Spec


def keys(cls: type, table: str = "") -> list[Key]:
    """Every key of the schema, in declaration order, each table's tables after its keys; a
    z-value's error rate just before it."""
    out, tables = [], []
    hints, fields = _schema_of(cls)
    for f in fields.values():
        tp, spec = hints[f.name], _spec(f)
        default: Any = (
            f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        )
        inner = [a for a in getattr(tp, "__args__", ()) if isinstance(a, type)]
        inner = [a for a in inner if dataclasses.is_dataclass(a)]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            tables += keys(tp, f"[{f.name}]")
            continue
        if spec.rate is not None:
            r = spec.rate
            rate_spec = Spec(r.doc, gt=0, le=RATE_MAX, tier=r.tier)
            out.append(Key(table, r.key, float, rate_of(default), rate_spec))
        out.append(Key(table, f.name, tp, default, spec))
        if inner:  # [[proposer.params]], [proposer.prices."<name>"]
            dotted = f"{table.strip('[]')}.{f.name}"
            many = f'[{dotted}."<name>"]' if tp.__origin__ is dict else f"[[{dotted}]]"
            tables += keys(inner[0], many)
    return out + tables


def type_text(tp: Any) -> str:
    args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
    origin = getattr(tp, "__origin__", None)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"table of {type_text(args[1])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(json.dumps(c.value) for c in tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "tables"
    return _kind(args[0] if len(args) == 1 else tp)


def default_text(k: Key) -> str:
    if k.default is dataclasses.MISSING:
        return "required"
    if k.default is None:
        return "unset"
    if isinstance(k.default, dict):
        return "{}"
    return show(k.default)


def template(root: type, head: list[str]) -> str:
    """`head`, then the keys marked Tier.INIT commented out at their defaults (or an
    example), by table: TOML that sets nothing."""
    lines = list(head)
    table = ""
    for k in keys(root):
        if k.spec.tier is not Tier.INIT:
            continue
        if k.table != table:
            table = k.table
            lines += ["", f"# {table}"]
        value = k.spec.example or default_text(k)
        unit = f" ({k.spec.unit})" if k.spec.unit else ""
        lines.append(f"{'# ' + k.name + ' = ' + value:<36} # {k.spec.doc}{unit}")
    return "\n".join(lines) + "\n"
