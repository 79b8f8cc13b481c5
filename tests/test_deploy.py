"""deploy/: the Prometheus rules and scrape config pass promtool, the Grafana
dashboard queries only lbcore's metrics, the Kubernetes manifests match the
API schemas (kubernetes-validate, offline) and the Deployment drains and
reloads as docs/scaling.md says, and the ConfigMap's lb.yaml passes
`lbcore check`."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "lbcore-dashboard.json"

# What lbcore exports (histograms by their base name).
METRICS = frozenset({
    "lbcore_requests_total", "lbcore_responses_total", "lbcore_generated_errors_total",
    "lbcore_timeouts_total", "lbcore_request_duration_seconds",
    "lbcore_upstream_response_duration_seconds", "lbcore_member_up",
    "lbcore_tls_handshakes_total", "lbcore_tls_handshake_failures_total",
    "lbcore_certificate_expiry_timestamp_seconds", "lbcore_connections_active",
    "lbcore_access_refused_total", "lbcore_retries_total", "lbcore_reloads_total",
    "lbcore_workers", "lbcore_worker_restarts_total", "lbcore_build_info",
    "lbcore_received_bytes_total", "lbcore_sent_bytes_total",
    # per (listener, pool, member)
    "lbcore_member_requests_total", "lbcore_member_responses_total",
    "lbcore_member_failures_total", "lbcore_member_retries_total",
    "lbcore_member_response_duration_seconds", "lbcore_member_requests_active",
    "lbcore_member_connections_active", "lbcore_member_connections_total",
    "lbcore_member_received_bytes_total", "lbcore_member_sent_bytes_total",
})
# Prometheus's own series an alert may use (lbcore down is `up == 0`).
PROMETHEUS_SERIES = frozenset({"up"})
METRIC = re.compile(r"lbcore_[a-z_]+")
SUFFIX = re.compile(r"_(bucket|sum|count)$")
# Grafana's variables, replaced so that promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "$listener": ".*", "$job": ".*", "$instance": ".*", "$pool": ".*"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")


def metric_names(expr: str) -> set[str]:
    return {SUFFIX.sub("", m) for m in METRIC.findall(expr)}


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, dict]:
    """Every Kubernetes object under deploy/kubernetes by kind (one of each)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_docs(path):
            if doc["kind"] != "Kustomization":
                out[doc["kind"]] = doc
    return out


# --- Prometheus ---------------------------------------------------------------

def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
            for r in g["rules"]]


@needs_promtool
def test_alert_rules_pass_promtool():
    r = promtool("check", "rules", PROM / "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_are_complete():
    rules = alert_rules()
    assert len(rules) >= 6
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used = metric_names(rule["expr"]) | (PROMETHEUS_SERIES & set(re.findall(
            r"\b[a-z_]+\b(?=\{)", rule["expr"])))
        assert used and used <= METRICS | PROMETHEUS_SERIES, (rule["alert"], used - METRICS)


def test_alerts_for_down_5xx_and_empty_pool():
    alerts = {r["alert"]: r for r in alert_rules()}
    assert {"LbcoreDown", "LbcoreHigh5xxRatio", "LbcorePoolNoHealthyMember"} <= set(alerts)
    assert alerts["LbcoreDown"]["labels"]["severity"] == "critical"


@needs_promtool
def test_alerts_fire_on_series(tmp_path):
    """promtool's rule unit tests: each new alert fires on the series it is
    about, and not on a healthy instance."""
    # promtool compares annotations too: the unit test is about expr, for and
    # labels, so the copy it loads has none.
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    job = 'job="lbcore", instance="lb-1:9100"'
    tests = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m",
         "input_series": [
             {"series": f'up{{{job}}}', "values": "1 1 0 0 0 0"},
             {"series": 'up{job="lbcore", instance="lb-2:9100"}', "values": "1 1 1 1 1 1"},
         ],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "LbcoreDown", "exp_alerts": [
                 {"exp_labels": {"severity": "critical", "job": "lbcore",
                                 "instance": "lb-1:9100"}}]}]},
        {"interval": "1m",
         "input_series": [
             {"series": f'lbcore_responses_total{{{job}, listener="web", pool="p", '
                        'code="2xx"}', "values": "0+600x15"},
             {"series": f'lbcore_responses_total{{{job}, listener="web", pool="p", '
                        'code="5xx"}', "values": "0+120x15"},
             {"series": f'lbcore_responses_total{{{job}, listener="ok", pool="p", '
                        'code="2xx"}', "values": "0+600x15"},
         ],
         "alert_rule_test": [
             {"eval_time": "12m", "alertname": "LbcoreHigh5xxRatio", "exp_alerts": [
                 {"exp_labels": {"severity": "critical", "job": "lbcore",
                                 "instance": "lb-1:9100", "listener": "web"}}]}]},
        {"interval": "1m",
         "input_series": [
             {"series": f'lbcore_member_up{{{job}, pool="web", member="a"}}',
              "values": "1 0 0 0 0"},
             {"series": f'lbcore_member_up{{{job}, pool="web", member="b"}}',
              "values": "0 0 0 0 0"},
             {"series": f'lbcore_member_up{{{job}, pool="api", member="c"}}',
              "values": "0 0 0 0 0"},
             {"series": f'lbcore_member_up{{{job}, pool="api", member="d"}}',
              "values": "1 1 1 1 1"},
         ],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "LbcorePoolNoHealthyMember", "exp_alerts": [
                 {"exp_labels": {"severity": "critical", "job": "lbcore",
                                 "instance": "lb-1:9100", "pool": "web"}}]}]},
    ]}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    r = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def kubernetes_sd_supported(tmp_path: Path) -> bool:
    """Debian's promtool is built without Kubernetes service discovery."""
    probe = tmp_path / "probe.yml"
    probe.write_text(yaml.safe_dump({"scrape_configs": [
        {"job_name": "probe", "kubernetes_sd_configs": [{"role": "pod"}]}]}))
    return promtool("check", "config", probe).returncode == 0


@needs_promtool
def test_prometheus_config_passes_promtool(tmp_path):
    config = PROM / "prometheus.yml"
    data = yaml.safe_load(config.read_text())
    assert data["rule_files"] == ["alerts.yml"]
    k8s_jobs = [j for j in data["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert k8s_jobs, "no kubernetes_sd example job"
    for job in data["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
    for job in k8s_jobs:
        assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
        keep = {(tuple(r["source_labels"]), r["regex"]) for r in job["relabel_configs"]
                if r.get("action") == "keep"}
        assert (("__meta_kubernetes_pod_label_app",), "lbcore") in keep
        assert (("__meta_kubernetes_pod_container_port_number",), "9100") in keep
    if not kubernetes_sd_supported(tmp_path):
        # Check everything else (relabelling included) with the SD block
        # swapped for a static target, next to a copy of the rule file.
        for job in k8s_jobs:
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": ["pod.invalid:9100"]}]
        shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
    r = promtool("check", "config", config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alerts.yml" in r.stdout + r.stderr     # the rule file was checked too


# --- Grafana -------------------------------------------------------------------

def dashboard_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels(dash) for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] == 39
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert list(variables) == ["DS_PROMETHEUS", "job", "instance", "listener", "pool"]
    assert variables["job"]["definition"] == "label_values(lbcore_build_info, job)"
    assert variables["listener"]["definition"] == \
        'label_values(lbcore_requests_total{job=~"$job", instance=~"$instance"}, listener)'
    for name in ("job", "instance", "listener", "pool"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    panels = dashboard_panels(dash)
    ids = [p["id"] for p in dash["panels"]] + \
        [q["id"] for p in dash["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]


def test_members_row_shows_each_member():
    """The per-member panels group by member and follow the pool and listener
    variables, so a failing or slow member stands out."""
    dash = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dash["panels"]]
    row = titles.index("Members")
    members = dash["panels"][row + 1:row + 6]
    assert {p["title"] for p in members} >= {"Member responses by class",
                                            "Member failures and retries",
                                            "Member response time p50 / p99"}
    for p in members:
        for t in p["targets"]:
            if "lbcore_member_" in t["expr"]:
                assert "member" in re.search(r"by \(([^)]*)\)", t["expr"])[1], t["expr"]
                assert 'pool=~"$pool"' in t["expr"] and 'listener=~"$listener"' in t["expr"]


def test_every_panel_follows_job_and_instance():
    dash = json.loads(DASHBOARD.read_text())
    for p in dashboard_panels(dash):
        for t in p["targets"]:
            for m in re.finditer(r"(lbcore_[a-z_]+)(\{[^}]*\})?", t["expr"]):
                sel = m.group(2) or ""
                assert 'job=~"$job"' in sel and 'instance=~"$instance"' in sel, \
                    (p["title"], m.group(0))


def test_dashboard_uses_only_lbcore_metrics():
    dash = json.loads(DASHBOARD.read_text())
    used = set()
    for expr in dashboard_exprs(dash):
        names = metric_names(expr)
        assert names, expr
        used |= names
    assert used <= METRICS, used - METRICS
    assert used == METRICS, f"no panel for {METRICS - used}"


@needs_promtool
def test_dashboard_queries_parse(tmp_path):
    """Each query, Grafana variables filled in, as a recording rule for promtool."""
    dash = json.loads(DASHBOARD.read_text())
    rules = []
    for i, expr in enumerate(e for p in dashboard_panels(dash) for e in
                             (t["expr"] for t in p["targets"])):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", path)
    assert r.returncode == 0, r.stdout + r.stderr


# --- Kubernetes -----------------------------------------------------------------

def test_manifests_match_kubernetes_schemas():
    from kubernetes_validate import utils

    version = utils.latest_version()
    paths = sorted(K8S.glob("*.yaml"))
    checked, errors = 0, []
    for path in paths:
        for doc in load_docs(path):
            if doc["kind"] == "Kustomization":
                continue
            try:
                utils.validate(doc, version, strict=True)
            except utils.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                errors.append(f"{path.name}: {doc['kind']} {where}: {exc.message}")
            checked += 1
    assert not errors, "\n".join(errors)
    assert checked >= 5


def test_kustomization_lists_the_manifests():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    wanted = {p.name for p in K8S.glob("*.yaml")
              if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")}
    assert listed == wanted


def test_deployment_drains_probes_and_mounts():
    objs = manifests()
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["spec"]["replicas"] >= 2
    assert c["args"] == ["run", "-c", "/etc/lbcore/lb.yaml"]
    # lbcore drains for 30 s after SIGTERM, after a preStop sleep.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > 30 + int(pre_stop[1])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9100}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9100}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config = mounts["/etc/lbcore"]
    assert "subPath" not in config, "a subPath mount never sees ConfigMap updates"
    assert volumes[config["name"]]["configMap"]["name"] == \
        objs["ConfigMap"]["metadata"]["name"]
    certs = mounts["/etc/lbcore/certs"]
    assert volumes[certs["name"]]["secret"]["secretName"] == \
        objs["Secret"]["metadata"]["name"]

    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == "lbcore"    # what the Prometheus job keeps
    for kind in ("Service", "PodDisruptionBudget"):
        spec = objs[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind


def test_service_keeps_the_client_address():
    svc = manifests()["Service"]["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["externalTrafficPolicy"] == "Local"
    assert {p["port"]: p["targetPort"] for p in svc["ports"]} == {443: 8443, 80: 8080}


def test_configmap_lb_yaml_passes_lbcore_check(tmp_path):
    objs = manifests()
    text = objs["ConfigMap"]["data"]["lb.yaml"]
    cfg = yaml.safe_load(text)
    admin = cfg["load_balancer"]["admin"]
    assert admin["port"] == 9100
    assert admin["address"] not in ("127.0.0.1", "localhost", "::1"), \
        "kubelet probes come from outside the pod"
    ports = {p["containerPort"] for p in objs["Deployment"]["spec"]["template"]["spec"]
             ["containers"][0]["ports"]}
    assert {lst["port"] for lst in cfg["listeners"]} | {9100} == ports

    # The certificates come from the kubernetes.io/tls Secret: swap its mount
    # for a directory of trustme certificates.
    secret_keys = set(objs["Secret"]["data"])
    files = {f for c in cfg["certificates"].values()
             for f in (c.get("certificate"), c.get("private_key")) if f}
    assert files and all(f.startswith("/etc/lbcore/certs/") for f in files), files
    assert {f.rsplit("/", 1)[1] for f in files} <= secret_keys
    ca = trustme.CA()
    leaf = ca.issue_cert("www.example.com")
    leaf.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    lb_yaml = tmp_path / "lb.yaml"
    lb_yaml.write_text(text.replace("/etc/lbcore/certs/", f"{tmp_path}/"))
    r = subprocess.run([sys.executable, "-m", "lbcore", "check", "-c", str(lb_yaml)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_configmap_redirect_acts_as_written(tmp_path):
    """The ConfigMap's http-80 listener (behind the Service's port 80)
    redirects to HTTPS on the Service's port 443, path and query kept, and
    forwards nothing in plaintext."""
    from tests.support.lbproc import LbProcess, free_port, wait_port

    cfg = yaml.safe_load(manifests()["ConfigMap"]["data"]["lb.yaml"])
    ca = trustme.CA()
    leaf = ca.issue_cert("www.example.com")
    leaf.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    for c in cfg["certificates"].values():
        for k in ("certificate", "private_key"):
            c[k] = c[k].replace("/etc/lbcore/certs/", f"{tmp_path}/")
    admin = free_port()
    cfg["load_balancer"]["admin"] = {"address": "127.0.0.1", "port": admin}
    cfg["load_balancer"]["workers"] = 1
    ports = {}
    for lst in cfg["listeners"]:
        lst["address"], lst["port"] = "127.0.0.1", free_port()
        ports[lst["name"]] = lst["port"]
    dead = free_port()          # a plaintext forward would reach nothing and give 502
    for pool in cfg["pools"].values():
        pool["members"] = [{"address": "127.0.0.1", "port": dead}]
        pool["health_check"] = {"enabled": False}
    (tmp_path / "lb.yaml").write_text(yaml.safe_dump(cfg))
    lb = LbProcess(["run", "-c", str(tmp_path / "lb.yaml")])
    try:
        wait_port(ports["http-80"], lb.proc)
        with socket.create_connection(("127.0.0.1", ports["http-80"]), timeout=5) as s:
            s.sendall(b"GET /shop/cart?id=7 HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
            head = s.recv(4096).decode()
        assert head.startswith("HTTP/1.1 308 "), head
        assert "\r\nLocation: https://www.example.com/shop/cart?id=7\r\n" in head, head
    finally:
        lb.stop()


# --- container and systemd --------------------------------------------------------------

def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "build", "**/__pycache__", "bench/results"):
        assert entry in ignored, entry


def test_dockerfile_healthcheck_port_from_the_environment():
    text = (ROOT / "Dockerfile").read_text()
    health = text[text.index("\nHEALTHCHECK "):].split("\nENTRYPOINT")[0]
    assert "9100" not in health and "LBCORE_ADMIN_PORT" in health
    assert "ENV" in text and "LBCORE_ADMIN_PORT=9100" in text


SYSTEMD = ROOT / "deploy" / "systemd" / "lbcore.service"


def test_systemd_unit_drains_reloads_and_uses_the_pidfile(tmp_path):
    unit = SYSTEMD.read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert "--pidfile /run/lbcore/lbcore.pid" in settings["ExecStart"]
    assert settings["PIDFile"] == "/run/lbcore/lbcore.pid"
    assert settings["ExecReload"].split()[1:3] == ["reload", "-c"]
    assert settings["KillMode"] == "mixed" and int(settings["TimeoutStopSec"]) > 30
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    lbcore = Path(sys.executable).with_name("lbcore")
    if not lbcore.exists():
        pytest.skip(f"{lbcore} not installed")
    copy = tmp_path / "lbcore.service"
    copy.write_text(unit.replace("/opt/lbcore/.venv/bin/lbcore", str(lbcore)))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
