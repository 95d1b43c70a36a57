"""What an operator checks before `kubectl apply`, offline, as functions that return what is
wrong (an empty list passes): KubeRay's CRD schemas, Kubernetes' schemas of the built-in
kinds, the KubeRay operator's own spec rules that matter to farm, the compose-spec schema.

Each check is a plain function so that a test can break a manifest on purpose and watch
the check fail. The schemas are vendored (kuberay/, compose-spec/; kubernetes-validate
ships its own), so nothing here needs a network or a cluster.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).parent
KUBERAY = HERE / "kuberay"
COMPOSE_SCHEMA = HERE / "compose-spec" / "compose-spec.json"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# The Kubernetes minor versions farm's manifests must be valid for.
K8S_VERSIONS = tuple(f"1.{minor}.0" for minor in range(30, 38))
# KubeRay rejects `authOptions.mode: token` below this Ray (utils/validation.go).
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)
# Set on Ray containers by the operator when authOptions.mode is token; set by hand they
# would shadow the operator's (it injects only variables that are not there yet).
OPERATOR_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")

Doc = dict[str, Any]


def where(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --- KubeRay's CRD schemas --------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The API server's structural-schema behaviour: unknown fields are errors (kubectl's
    default field validation is Strict), except where the schema keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(s) for s in schema]
    return schema


def _list_type(validator: Any, list_type: str, instance: Any, schema: Doc) -> Iterator[Any]:
    """`x-kubernetes-list-type`: entries of a `map` list are unique by their key fields
    (two containers named alike, two env vars of one name), of a `set` by value."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = [json.dumps(i, sort_keys=True) for i in instance]
        if len(seen) != len(set(seen)):
            yield jsonschema.ValidationError(f"duplicate entries in a set list: {instance}")
    elif list_type == "map":
        item = schema.get("items", {}).get("properties", {})
        keys = schema.get("x-kubernetes-list-map-keys", [])
        tuples = [tuple(i.get(k, item.get(k, {}).get("default")) for k in keys) for i in instance]
        dupes = {t for t in tuples if tuples.count(t) > 1}
        if dupes:
            yield jsonschema.ValidationError(f"duplicate {keys} in a map list: {sorted(dupes)}")


def _cel(validator: Any, rules: list[Doc], instance: Any, schema: Doc) -> Iterator[Any]:
    # CEL rules are the API server's to evaluate. None of farm's fields carry one; if a
    # manifest starts using one, say so instead of passing it unchecked.
    for rule in rules:
        yield jsonschema.ValidationError(f"CEL rule not checked offline: {rule['message']}")


_CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,  # OpenAPI v3.0 schemas follow draft 4's keywords
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel},
)


@functools.cache
def _crd_validator(kind: str, version: str) -> Any:
    # libyaml's loader: the CRDs are 2 MB of YAML, ten times slower to read in Python.
    crd = yaml.load(
        (KUBERAY / CRD_FILES[kind]).read_text(),
        Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),
    )
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _CrdValidator(_strict(served["schema"]["openAPIV3Schema"]))


def crd_errors(doc: Doc) -> list[str]:
    """A RayCluster or RayJob against the openAPIV3Schema of KubeRay's CRD."""
    group, _, version = doc.get("apiVersion", "").partition("/")
    if doc.get("kind") not in CRD_FILES or group != "ray.io":
        return [f"{where(doc)}: not a KubeRay resource ({doc.get('apiVersion')})"]
    validator = _crd_validator(doc["kind"], version)
    return [
        f"{where(doc)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


# --- Kubernetes' schemas of the built-in kinds ------------------------------------------


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(where, pod template) of every pod a RayCluster or RayJob makes."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        yield "head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]
    elif doc["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        yield "submitter", spec["submitterPodTemplate"]


def builtin_errors(doc: Doc, versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    """A built-in kind against Kubernetes' own schemas (`--strict`: unknown fields are
    errors), for every version. A KubeRay resource's pod templates are checked as the
    PodTemplates they become: the CRD embeds the PodSpec of the Kubernetes it was built
    with, which need not be the cluster's."""
    if doc["kind"] in CRD_FILES:
        docs = [
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{doc['metadata']['name']}-{name}"},
                "template": t,
            }
            for name, t in pod_templates(doc)
        ]
    else:
        docs = [doc]
    errors = []
    for version in versions:
        for d in docs:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(map(str, e.path)) or "<root>"
                errors.append(
                    f"{where(doc)} ({where(d)}), Kubernetes {version}: {path}: {e.message}"
                )
    return errors


# --- the KubeRay operator's spec rules --------------------------------------------------

_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    ok_prefix = not prefix or (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix))
    return bool(ok_prefix and len(name) <= 63 and _LABEL_NAME.fullmatch(name))


def _label_value_ok(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.fullmatch(value)))


def _groups(cluster: Doc) -> Iterator[tuple[str, Doc]]:
    spec = cluster["spec"]
    yield "Head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _token_auth(cluster: Doc) -> Doc | None:
    auth = cluster["spec"].get("authOptions") or {}
    return auth if auth.get("mode") == "token" else None


def cluster_rule_errors(cluster: Doc) -> list[str]:
    """What KubeRay's ValidateRayClusterSpec (v1.5+) refuses, and what its token auth needs.
    A refused spec is applied all the same without the validating webhook: the operator
    then only logs an InvalidRayClusterSpec event and creates no pods."""
    errors = []
    spec = cluster["spec"]
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for name, group in _groups(cluster):
        params = group.get("rayStartParams") or {}
        if "labels" in params:
            errors.append(
                f"rayStartParams['labels'] is not supported for {name} group; "
                "please use the top-level Labels field instead"
            )
        for key, value in (group.get("labels") or {}).items():
            if not (_label_key_ok(key) and _label_value_ok(str(value))):
                errors.append(f"invalid label {key}={value} for {name} group")
        if group.get("resources") and any(params.get(p) for p in RAY_START_RESOURCE_PARAMS):
            errors.append(
                f"resource fields should not be set in both rayStartParams and Resources "
                f"for {name} group; please use only one"
            )
        if name != "Head":
            lo, hi = group.get("minReplicas"), group.get("maxReplicas")
            if not autoscaling and (lo is None or hi is None):
                errors.append(f"worker group {name} must set both minReplicas and maxReplicas")
            elif lo is not None and hi is not None and lo > hi:
                errors.append(f"worker group {name} has minReplicas {lo} > maxReplicas {hi}")
    hand_set = [
        f"{where_}/{e['name']}"
        for where_, tpl in pod_templates(cluster)
        for c in tpl["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"] in OPERATOR_AUTH_ENV
    ]
    auth = _token_auth(cluster)
    if auth is None:
        errors.append(
            "no spec.authOptions.mode: token: the operator sends no token to the dashboard "
            "(RayJobs fail with 401) and Ray containers run without token auth"
        )
    else:
        if _version(spec.get("rayVersion", "")) < MIN_RAY_FOR_TOKEN_AUTH:
            errors.append(f"authOptions.mode is 'token' but rayVersion is {spec.get('rayVersion')}")
        if not auth.get("secretName"):
            errors.append("authOptions has no secretName: the operator makes a token no one knows")
    if hand_set:
        errors.append(
            f"RAY_AUTH_* set by hand ({', '.join(hand_set)}): the operator injects them from "
            "spec.authOptions and skips variables already set"
        )
    return [f"{where(cluster)}: {e}" for e in errors]


def job_rule_errors(job: Doc, clusters: Iterable[Doc]) -> list[str]:
    """A RayJob on a long-lived RayCluster: the selected cluster exists in the same
    namespace, and has token auth through authOptions, which is what makes the operator
    pass the token to the submitter and to its own job-status and job-stop calls."""
    spec = job["spec"]
    errors = []
    if not spec.get("entrypoint", "").strip():
        errors.append("no entrypoint")
    name = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
    namespace = job["metadata"].get("namespace")
    found = [
        c
        for c in clusters
        if c["metadata"]["name"] == name and c["metadata"].get("namespace") == namespace
    ]
    if not found:
        errors.append(f"clusterSelector names no RayCluster {name!r} in namespace {namespace!r}")
    elif _token_auth(found[0]) is None:
        errors.append(f"RayCluster {name} has no authOptions token auth: the job cannot be tracked")
    for _, tpl in pod_templates(job):
        for c in tpl["spec"]["containers"]:
            if any(e["name"] in OPERATOR_AUTH_ENV for e in c.get("env", [])):
                errors.append("the submitter sets RAY_AUTH_* by hand; the operator injects them")
    return [f"{where(job)}: {e}" for e in errors]


# --- docker compose ---------------------------------------------------------------------


@functools.cache
def _compose_validator() -> Any:
    return jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))


def compose_errors(compose: Doc) -> list[str]:
    """A compose file against the Compose Specification's schema."""
    return [
        f"compose: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in _compose_validator().iter_errors(copy.deepcopy(compose))
    ]
