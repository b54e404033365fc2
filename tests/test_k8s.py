"""The Kubernetes deployment and its monitoring.

Every overlay under k8s/overlays is rendered with `kubectl kustomize`, validated offline against
the Kubernetes OpenAPI schemas (kubernetes-validate), and checked for what the schemas cannot
say: restricted pods, a Bytewax cluster per dataflow (StatefulSet, headless Service, hostfile),
recovery on a claim template, mounts that match atpflow.yaml, probes, resources, disruption
budgets and network policies. The Grafana dashboard and the alert rules may only query series
that operators/metrics.py (or the runtime, by a short allow-list) actually exports.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from operators import metrics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DASHBOARD = K8S / "monitoring" / "grafana-dashboard.json"
RULES = K8S / "monitoring" / "prometheus-rules.yaml"

OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
NAMESPACE = {"dev": "atpflow-dev", "prod": "atpflow"}
REPLICAS = {"dev": 1, "prod": 3}
FLOWS = ("availability", "milestones")

#: The oldest Kubernetes we deploy to, and the newest schemas kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
#: Prometheus-operator resources: no schema ships with kubernetes-validate; shape checked below.
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule"}

CONFIG_DIR = "/etc/atpflow"
CONFIG_FILE = f"{CONFIG_DIR}/atpflow.yaml"
SECRETS_DIR = "/var/run/secrets/atpflow"
CREDENTIALS = "atpflow-credentials"
API_PORT = 3030
WORKER_PORT = 9999
SERVE_PORT = 8080
UID = 10001

#: Series the dashboard and alerts query that operators/metrics.py does not define.
RUNTIME_SERIES = {
    "up": "Prometheus' scrape health of each target",
    "bytewax_stateful_batch_on_batch_duration_seconds_bucket": "Bytewax's step timing",
    "process_resident_memory_bytes": "prometheus-client's process collector",
}

#: The metrics contract: exposed family name -> label names.
EXPECTED_METRICS: dict[str, set[str]] = {
    "atpflow_records_in_total": {"topic"},
    "atpflow_records_applied_total": {"source"},
    "atpflow_duplicates_total": {"source"},
    "atpflow_dead_letters_total": {"reason"},
    "atpflow_records_out_total": {"topic"},
    "atpflow_gap_skips_total": {"source"},
    "atpflow_marketplace_requests_total": {"channel", "operation", "status"},
    "atpflow_marketplace_throttled_total": {"channel", "operation"},
    "atpflow_marketplace_retries_total": {"channel", "operation"},
    "atpflow_marketplace_dead_letters_total": {"channel"},
    "atpflow_marketplace_drift_repairs_total": {"channel"},
    "atpflow_redis_write_errors_total": set(),
    "atpflow_recovery_resumes_total": set(),
    "atpflow_consumer_lag_messages": {"topic", "partition"},
    "atpflow_event_time_lag_seconds": {"source"},
    "atpflow_reorder_buffered_records": set(),
    "atpflow_open_gaps": set(),
    "atpflow_parked_records": set(),
    "atpflow_marketplace_circuit_open": {"channel", "operation"},
    "atpflow_marketplace_backlog_keys": {"channel"},
    "atpflow_input_to_output_latency_seconds": {"topic"},
    "atpflow_event_time_to_output_latency_seconds": {"topic"},
    "atpflow_atp_drift_units": set(),
    "atpflow_marketplace_request_latency_seconds": {"channel", "operation"},
}
#: Labels whose values grow with the business: never on a metric.
UNBOUNDED_LABELS = {"sku", "order", "order_ref", "channel_order_id", "shipment_id",
                    "tracking_number", "key", "item", "material"}


# --- rendering -----------------------------------------------------------------------------


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: tests/test_k8s.py renders k8s/overlays/* with "
            "`kubectl kustomize` (kubectl >= 1.27 bundles kustomize v5). Install kubectl.",
            pytrace=False,
        )
    proc = subprocess.run(  # noqa: S603 - our own paths, no shell
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize k8s/overlays/{overlay} failed:\n{proc.stderr}",
                    pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(overlay)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return of_kind(docs, "StatefulSet") + of_kind(docs, "Deployment")


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    return container


def init_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(workload)["initContainers"]
    return container


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> mount."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in pod_spec(workload).get("volumes", []) if v["name"] == name]
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "matchExpressions are not checked here"
    match = selector.get("matchLabels", selector)
    return all(labels.get(k) == v for k, v in match.items())


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


_QUANTITY_SUFFIX = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9,
                    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def quantity(value: str | int | float) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert m and m[2] in _QUANTITY_SUFFIX, f"unparsed quantity {value!r}"
    return float(m[1]) * _QUANTITY_SUFFIX[m[2]]


def config_map(docs: tuple[dict[str, Any], ...], workload: dict[str, Any]) -> dict[str, Any]:
    return one(docs, "ConfigMap", volume(workload, "config")["configMap"]["name"])


def atpflow_yaml(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    sts = one(docs, "StatefulSet", "atpflow-availability")
    return yaml.safe_load(config_map(docs, sts)["data"]["atpflow.yaml"])


# --- the rendered objects ------------------------------------------------------------------


def test_every_overlay_is_covered() -> None:
    assert set(OVERLAYS) == set(NAMESPACE) == set(REPLICAS)


def test_objects_match_the_kubernetes_schemas(docs: tuple[dict[str, Any], ...]) -> None:
    errors = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}) "
                              f"{where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_prometheus_operator_resources(docs: tuple[dict[str, Any], ...]) -> None:
    (monitor,) = of_kind(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]
    for sts in of_kind(docs, "StatefulSet"):
        assert selects(selector, pod_labels(sts)), f"PodMonitor misses {sts['metadata']['name']}"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["path"] == "/metrics"
            assert port_number(main_container(sts), endpoint["port"]) == API_PORT
    for deployment in of_kind(docs, "Deployment"):
        assert not selects(selector, pod_labels(deployment))

    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())["spec"]
    _check_rule_shapes(rule)


def _check_rule_shapes(rule: dict[str, Any]) -> None:
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert alerts
    for r in alerts:
        assert re.fullmatch(r"Atpflow[A-Z]\w+", r["alert"]), r
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
        assert _balanced(r["expr"]), f"{r['alert']}: unbalanced brackets in {r['expr']!r}"


def test_everything_lands_in_the_overlay_namespace(
    overlay: str, docs: tuple[dict[str, Any], ...]
) -> None:
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE[overlay]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    elsewhere = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] != "Namespace"
                 and d["metadata"].get("namespace") != NAMESPACE[overlay]]
    assert not elsewhere


def test_pods_run_restricted(docs: tuple[dict[str, Any], ...]) -> None:
    assert len(workloads(docs)) == 3
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_ctx = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            ctx = {**pod_ctx, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, where
            assert ctx.get("runAsUser") == UID, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert not ctx.get("privileged"), where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("capabilities", {}).get("add"), where
            assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            # A read-only root needs a writable /tmp, and only there.
            tmp = mounts(container).get("/tmp")  # noqa: S108 - a mount path
            assert tmp and "emptyDir" in volume(workload, tmp["name"]), where


def test_dataflows_are_bytewax_clusters(overlay: str, docs: tuple[dict[str, Any], ...]) -> None:
    statefulsets = {s["metadata"]["name"]: s for s in of_kind(docs, "StatefulSet")}
    assert set(statefulsets) == {f"atpflow-{flow}" for flow in FLOWS}
    others = workloads(docs)
    for flow in FLOWS:
        name = f"atpflow-{flow}"
        sts = statefulsets[name]
        replicas = sts["spec"]["replicas"]
        assert replicas == REPLICAS[overlay]
        assert sts["spec"]["podManagementPolicy"] == "Parallel"

        # The headless Service gives each pod the DNS name the hostfile lists: only this
        # cluster's pods, ready or not.
        service = one(docs, "Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"].get("publishNotReadyAddresses") is True, name
        assert [w["metadata"]["name"] for w in others
                if selects(service["spec"]["selector"], pod_labels(w))] == [name]
        assert selects(sts["spec"]["selector"], pod_labels(sts))

        main, init = main_container(sts), init_container(sts)
        assert main["args"] == ["run", "--config", CONFIG_FILE, "--flow", flow]
        assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
            "worker": WORKER_PORT, "metrics": API_PORT}
        assert [p["port"] for p in service["spec"]["ports"]] == [WORKER_PORT]

        main_env, init_env = env(main), env(init)
        for e in (main_env, init_env):
            assert e["BYTEWAX_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert e["BYTEWAX_STATEFULSET_NAME"]["value"] == name
        # The init container finds the flow (for its recovery folder) in the pod's label.
        assert pod_labels(sts)["app.kubernetes.io/component"] == flow
        assert init_env["DATAFLOW"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['app.kubernetes.io/component']")
        assert main_env["BYTEWAX_DATAFLOW_API_ENABLED"]["value"] == "true"
        assert main_env["BYTEWAX_DATAFLOW_API_PORT"]["value"] == str(API_PORT)
        assert init_env["BYTEWAX_REPLICAS"]["value"] == str(replicas)

        # The init container writes the hostfile into a volume the dataflow reads.
        hostfile = main_env["BYTEWAX_HOSTFILE_PATH"]["value"]
        assert init_env["BYTEWAX_HOSTFILE_PATH"]["value"] == hostfile
        directory = str(Path(hostfile).parent)
        shared = mounts(main)[directory]["name"]
        assert mounts(init)[directory]["name"] == shared
        assert "emptyDir" in volume(sts, shared)
        assert f"svc:{WORKER_PORT}" in init["command"][-1]


def test_recovery_lives_on_a_claim_template(docs: tuple[dict[str, Any], ...]) -> None:
    recovery_dir = atpflow_yaml(docs)["recovery"]["dir"]
    for sts in of_kind(docs, "StatefulSet"):
        name = sts["metadata"]["name"]
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain", "whenScaled": "Retain"}
        claim_name = claim["metadata"]["name"]
        assert claim_name not in {v["name"] for v in pod_spec(sts)["volumes"]}, name
        for container in (main_container(sts), init_container(sts)):
            mount = mounts(container).get(recovery_dir, {})
            assert mount.get("name") == claim_name, f"{name}/{container['name']}: {recovery_dir}"
        # `atpflow run` resumes from <recovery.dir>/<flow>: the partitions must be made there.
        assert f'recovery="{recovery_dir}/$DATAFLOW"' in init_container(sts)["command"][-1]


def test_config_and_credentials_are_mounted(
    overlay: str, docs: tuple[dict[str, Any], ...], tmp_path: Path
) -> None:
    from dataflows.config import load_config
    from sinks.marketplace.config import load_marketplace_config

    for workload in workloads(docs):
        data = config_map(docs, workload)["data"]
        assert set(data) == {"atpflow.yaml", "locations.yaml", "channels.yaml"}
        assert mounts(main_container(workload))[CONFIG_DIR]["name"] == "config"
        assert CONFIG_FILE in main_container(workload)["args"]
        # Credentials are files, never environment values.
        for container in containers(workload):
            assert not container.get("envFrom")
            assert not [e for e in container.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})]

    # The reference files are the project's, unchanged.
    sts = one(docs, "StatefulSet", "atpflow-availability")
    data = config_map(docs, sts)["data"]
    for name in ("locations.yaml", "channels.yaml"):
        assert data[name] == (ROOT / "config" / name).read_text(), f"k8s copy of {name} drifted"

    # atpflow.yaml passes the real loaders, with its /etc/atpflow paths made local.
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    raw = yaml.safe_load(data["atpflow.yaml"])
    assert raw["reference"] == {"locations": f"{CONFIG_DIR}/locations.yaml",
                                "channels": f"{CONFIG_DIR}/channels.yaml"}
    config = load_config(tmp_path / "atpflow.yaml", environ={}, overrides={
        "reference.locations": str(tmp_path / "locations.yaml"),
        "reference.channels": str(tmp_path / "channels.yaml"),
    })
    marketplaces = load_marketplace_config(config.marketplaces)
    assert config.metrics_port == API_PORT

    # Every secret file it names is a key of the Secret mounted where it points.
    secret_files = {Path(p).name for p in _strings(raw) if p.startswith(f"{SECRETS_DIR}/")}
    assert secret_files >= {"kafka-sasl-password", "shopify-access-token",
                            "amazon-lwa-client-secret", "amazon-lwa-refresh-token"}
    assert set(marketplaces.channels) <= {c.id for c in config.channels.channels}
    secrets = of_kind(docs, "Secret")
    for dataflow in of_kind(docs, "StatefulSet"):
        credentials = mounts(main_container(dataflow))[SECRETS_DIR]
        assert credentials.get("readOnly") is True
        secret_name = volume(dataflow, credentials["name"])["secret"]["secretName"]
        if overlay == "prod":
            # Provisioned from the secret store under this exact name, not rendered.
            assert secret_name == CREDENTIALS and not secrets
        else:
            assert set(one(docs, "Secret", secret_name)["data"]) == secret_files
    serve = one(docs, "Deployment", "atpflow-serve")
    assert SECRETS_DIR not in mounts(main_container(serve)), "serve needs no credentials"


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_probes_and_resources(docs: tuple[dict[str, Any], ...]) -> None:
    for workload in workloads(docs):
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            for res in ("cpu", "memory"):
                request = quantity(resources["requests"][res])
                assert 0 < request <= quantity(resources["limits"][res]), f"{where} {res}"
        main = main_container(workload)
        if workload["kind"] == "StatefulSet":
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                get = main[probe]["httpGet"]
                assert (get["path"], port_number(main, get["port"])) == ("/metrics", API_PORT)
        else:
            get = main["readinessProbe"]["httpGet"]
            assert (get["path"], port_number(main, get["port"])) == ("/healthz", SERVE_PORT)
            # /healthz fails while Redis is down: a restart would not fix that.
            assert port_number(main, main["livenessProbe"]["tcpSocket"]["port"]) == SERVE_PORT


def test_every_workload_has_one_disruption_budget(docs: tuple[dict[str, Any], ...]) -> None:
    budgets = of_kind(docs, "PodDisruptionBudget")
    for workload in workloads(docs):
        covering = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(workload))]
        assert len(covering) == 1, workload["metadata"]["name"]
        assert covering[0]["spec"].get("maxUnavailable") == 1
    for budget in budgets:
        assert len([w for w in workloads(docs)
                    if selects(budget["spec"]["selector"], pod_labels(w))]) == 1


def _peer(peer: dict[str, Any]) -> tuple[str, Any]:
    if "ipBlock" in peer:
        return ("ip", peer["ipBlock"]["cidr"])
    if "namespaceSelector" in peer and "podSelector" not in peer:
        return ("namespace", peer["namespaceSelector"].get("matchLabels", {}).get(
            "kubernetes.io/metadata.name", "*"))
    assert set(peer) == {"podSelector"}, peer
    return ("pods", json.dumps(peer["podSelector"]["matchLabels"], sort_keys=True))


def _rules(policy: dict[str, Any], direction: str) -> set[tuple[str, int, tuple[str, Any]]]:
    """(protocol, port, peer) allowed; a rule without peers allows ("any", "*")."""
    peers_key = "from" if direction == "ingress" else "to"
    allowed = set()
    for rule in policy["spec"].get(direction, []):
        assert rule.get("ports"), f"{policy['metadata']['name']} opens every port"
        peers = [_peer(p) for p in rule.get(peers_key, [])] or [("any", "*")]
        allowed |= {(p.get("protocol", "TCP"), p["port"], peer)
                    for p in rule["ports"] for peer in peers}
    return allowed


def test_network_policies(docs: tuple[dict[str, Any], ...]) -> None:
    policies = of_kind(docs, "NetworkPolicy")
    (deny,) = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")

    config = atpflow_yaml(docs)
    brokers = config["kafka"]["bootstrap_servers"].split(",")
    kafka_ports = {int(broker.rsplit(":", 1)[1]) for broker in brokers}
    redis_port = urlsplit(config["redis"]["url"]).port or 6379
    dns = {("UDP", 53, ("namespace", "kube-system")), ("TCP", 53, ("namespace", "kube-system"))}

    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        (policy,) = [p for p in policies if p is not deny
                     and selects(p["spec"]["podSelector"], pod_labels(workload))]
        assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        ingress, egress = _rules(policy, "ingress"), _rules(policy, "egress")
        egress_ports = {(proto, port) for proto, port, _ in egress}
        assert dns <= egress, name
        assert ("TCP", redis_port) in egress_ports, name
        if workload["kind"] == "Deployment":
            assert ingress == {("TCP", SERVE_PORT, ("namespace", "*"))}, name
            continue
        own = [p["podSelector"] for r in policy["spec"]["ingress"] for p in r["from"]
               if "podSelector" in p]
        (own_pods,) = own
        assert [w["metadata"]["name"] for w in workloads(docs)
                if selects(own_pods, pod_labels(w))] == [name], "workers talk to their own cluster"
        peers = ("pods", json.dumps(own_pods["matchLabels"], sort_keys=True))
        assert ingress == {("TCP", API_PORT, ("namespace", "monitoring")),
                           ("TCP", WORKER_PORT, peers)}, name
        assert ("TCP", WORKER_PORT, peers) in egress, name
        assert {("TCP", p) for p in kafka_ports} <= egress_ports, name
        assert ("TCP", 443) in egress_ports, name


def test_prod_is_spread_and_bigger_than_dev() -> None:
    dev, prod = _render("dev"), _render("prod")
    for sts in of_kind(prod, "StatefulSet"):
        terms = pod_spec(sts)["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]
        assert [t["topologyKey"] for t in terms] == ["kubernetes.io/hostname"]
        assert selects(terms[0]["labelSelector"], pod_labels(sts))
        assert not [w for w in workloads(prod) if w is not sts
                    and selects(terms[0]["labelSelector"], pod_labels(w))]
    for workload in workloads(prod):
        kind, name = workload["kind"], workload["metadata"]["name"]
        small = main_container(one(dev, kind, name))["resources"]
        big = main_container(workload)["resources"]
        for bound in ("requests", "limits"):
            for res in ("cpu", "memory"):
                assert quantity(big[bound][res]) > quantity(small[bound][res]), (name, bound, res)
        assert "podAntiAffinity" in pod_spec(workload)["affinity"], name


def test_dashboard_is_shipped_as_a_sidecar_config_map(docs: tuple[dict[str, Any], ...]) -> None:
    (dashboards,) = [c for c in of_kind(docs, "ConfigMap")
                     if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    (text,) = dashboards["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


# --- dashboard, alerts and metrics -----------------------------------------------------------

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
                    "and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, labels and keywords dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, Grafana $variables in them
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", text):
        if re.match(r"\s*\(", text[m.end():]) or m.group().lower() in _PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def _balanced(expr: str) -> bool:
    depth = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            depth.append(ch)
        elif ch in pairs and (not depth or depth.pop() != pairs[ch]):
            return False
    return not depth


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard and the alert rules."""
    dashboard = _dashboard()
    queries = [(f"panel {p['title']!r} {t['refId']}", t["expr"])
               for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
            assert found, f"variable {var['name']}: only label_values(<expr>, label) is checked"
            queries.append((f"variable {var['name']}", found[1]))
    rules = yaml.safe_load(RULES.read_text())
    queries += [(f"alert {r['alert']}", r["expr"])
                for g in rules["spec"]["groups"] for r in g["rules"]]
    return queries


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, topic) (rate(a_bucket{ns=~"$ns"}[$__interval])))'
            " / ignoring (x) group_left b_total offset 5m and on() max_over_time(c[2m]) > 1e3")
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    charts = [p for p in panels if p["type"] != "row"]
    assert len(charts) >= 15
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    for panel in charts:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert _balanced(target["expr"]), (panel["title"], target["expr"])


def test_queries_only_use_exported_series() -> None:
    known = metrics.exported_metric_names() | set(RUNTIME_SERIES)
    unknown = [f"{where}: {name}" for where, expr in _queries()
               for name in sorted(metric_names(expr) - known)]
    assert not unknown, "series no one exports:\n" + "\n".join(unknown)


def test_runtime_allow_list_is_in_use() -> None:
    used = set().union(*(metric_names(expr) for _, expr in _queries()))
    assert set(RUNTIME_SERIES) <= used, set(RUNTIME_SERIES) - used


def test_dashboard_charts_every_metric() -> None:
    used = set().union(*(metric_names(t["expr"]) for p in _dashboard()["panels"]
                         for t in p.get("targets", [])))
    charted = used & metrics.exported_metric_names()
    missing = [family for family in EXPECTED_METRICS
               if not any(name.startswith(family) for name in charted)]
    assert not missing, f"metrics without a panel: {missing}"


def test_quantiles_aggregate_buckets_by_le() -> None:
    for where, expr in _queries():
        for found in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*(\w+)\s+by\s*\(([^)]*)\)"
                                 r"\s*\((\w+)\((\w+)", expr):
            labels = {label.strip() for label in found[2].split(",")}
            assert "le" in labels, where
            assert found[4].endswith("_bucket"), where
        assert expr.count("histogram_quantile(") == len(re.findall(
            r"histogram_quantile\(\s*[\d.]+\s*,\s*\w+\s+by", expr)), where


# Run apart: it gives every labelled metric a child, which must not leak into other tests.
_EXPOSITION = """
import json, re, sys
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from operators import metrics

expected = json.loads(sys.argv[1])
for obj in vars(metrics).values():
    if isinstance(obj, MetricWrapperBase):
        family = obj.describe()[0]
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = expected[name]
        if labels:
            obj.labels(**{label: "x" for label in labels})
series = {}
for line in generate_latest(REGISTRY).decode().splitlines():
    if line.startswith("atpflow_"):
        name = line.split("{")[0].split(" ")[0]
        series.setdefault(name, set()).update(
            label for label in re.findall(r'(\\w+)="', line) if label != "le")
print(json.dumps({k: sorted(v) for k, v in series.items() if not k.endswith("_created")}))
"""


def test_metrics_module_exports_the_contract() -> None:
    expected = json.dumps({name: sorted(labels) for name, labels in EXPECTED_METRICS.items()})
    proc = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", _EXPOSITION, expected],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    series: dict[str, list[str]] = json.loads(proc.stdout)
    assert set(series) == metrics.exported_metric_names()
    for name, labels in series.items():
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in EXPECTED_METRICS else name
        assert set(labels) == EXPECTED_METRICS[family], name
        assert not set(labels) & UNBOUNDED_LABELS, name
    assert set(metrics.__all__) >= {"start_metrics_server", "exported_metric_names"}
