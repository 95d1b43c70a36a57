"""What a cluster makes of a manifest at run time, for the parts farm depends on: resource
quantities, which nodes a pod may be scheduled on, which targets Prometheus keeps after
relabelling. Small, literal re-implementations of the documented rules, so that tests can
ask "would this pod land on a time-sliced RTX 4090 node?" without a cluster."""

from __future__ import annotations

import re
from typing import Any

_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3, "": 1,
}  # fmt: skip


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("6", "200m", "24Gi") as a number of units."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m and m.group(2) in _SUFFIX, f"not a quantity: {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def docker_bytes(value: str | int) -> int:
    """A docker/compose byte size ("2gb", "512m", 1073741824) in bytes."""
    m = re.fullmatch(r"([0-9]+)\s*([kmg]?)b?", str(value).lower())
    assert m, f"not a byte size: {value!r}"
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def _expression_holds(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        if key not in labels:
            return False
        a, b = int(labels[key]), int(values[0])
        return a > b if op == "Gt" else a < b
    raise AssertionError(f"unknown node selector operator {op}")


def schedulable_on(pod_spec: dict[str, Any], node_labels: dict[str, str]) -> bool:
    """Whether the scheduler may place the pod on a node with these labels, as far as
    nodeSelector and required node affinity go (terms are ORed, expressions ANDed)."""
    if any(node_labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        pod_spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if not required:
        return True
    return any(
        all(_expression_holds(e, node_labels) for e in term.get("matchExpressions", []))
        for term in required["nodeSelectorTerms"]
    )


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling of one discovered target: its labels after `configs`, or None
    when a keep/drop dropped it. The actions farm's configs use: keep, drop, replace."""
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        m = re.fullmatch(c.get("regex", "(.*)"), value)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\\1", c.get("replacement", "$1"))
            labels[c["target_label"]] = m.expand(replacement)
        assert action in ("keep", "drop", "replace"), f"relabel action {action} not modelled"
    return labels
