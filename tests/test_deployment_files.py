"""The deployment files against the service they deploy: the alert rules parse and watch series the service really
exports (a fresh ``Metrics``, and a real registry counting a failed load), the ConfigMap and compose set only real
settings and the model poll interval explicitly, and the model-volume variants (compose override, kustomize
component) mount the model folder read-only with scanning on. promtool's own unit tests of the rules
(docker/prometheus/alerts.test.yml) run in scripts/static-checks.sh; these need nothing but Python."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.config import ENV_PREFIX, Settings
from service.metrics import Metrics
from service.registry import ModelRegistry, VersionPolicy
from tests.test_model_versions import FakeModel, FakeServing, write_version

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "docker" / "prometheus" / "alerts.test.yml"

#: The sample names each metric type exports (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_names(metrics: Metrics) -> set[str]:
    """Every series name the service's /metrics can carry (also those with no labelled child yet)."""
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_every_alert_rule_parses_and_watches_only_metrics_the_service_exports() -> None:
    rules = alert_rules()
    assert {"FerServiceDown", "FerOverloaded", "FerServerErrors", "FerModelLoadFailed"} <= set(rules)
    exported = exported_names(Metrics())
    tested = ALERT_TESTS.read_text()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        used = set(re.findall(r"\bfer_[a-z_]+", rule["expr"]))
        assert used <= exported, f"{name} uses {sorted(used - exported)}, which the service does not export"
        assert f"alertname: {name}" in tested, f"{name} has no promtool unit test in {ALERT_TESTS.name}"


def test_the_failed_load_alert_watches_a_series_exported_at_zero_and_counted_by_a_real_failed_load(
    tmp_path: Path,
) -> None:
    """``increase()`` misses a counter's first value when its series only appears with it: the failed-load series is
    exported at 0 from start-up, and a broken version dropped into a real registry with the service's metrics as its
    observer turns it to 1 (the old version serving on)."""
    expr = alert_rules()["FerModelLoadFailed"]["expr"]
    assert re.search(r'increase\(fer_model_loads_total\{result="failed"\}\[\d+m\]\)', expr), expr
    metrics = Metrics()
    assert 'fer_model_loads_total{result="failed"} 0.0' in metrics.render().decode()

    async def scenario() -> None:
        write_version(tmp_path, "1")
        registry = ModelRegistry(
            tmp_path,
            VersionPolicy.parse("latest"),
            load=FakeModel,  # type: ignore[arg-type]
            build=lambda version, model: FakeServing(version),
            observer=metrics,
        )
        await registry.poll()
        write_version(tmp_path, "2", broken=True)
        await registry.poll()
        assert registry.get().version == "1"

    asyncio.run(scenario())
    text = metrics.render().decode()
    assert 'fer_model_loads_total{result="failed"} 1.0' in text
    assert 'fer_model_loads_total{result="loaded"} 1.0' in text


def configmap(path: Path = ROOT / "k8s" / "configmap.yaml") -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load(path.read_text())["data"]
    return data


def compose_environment(path: Path) -> dict[str, str | None]:
    """A compose file's ``fer`` environment: name -> value (None: passed through from the shell)."""
    entries = yaml.safe_load(path.read_text())["services"]["fer"]["environment"]
    return {name: (value if sep else None) for name, sep, value in (entry.partition("=") for entry in entries)}


def compose_default(value: str | None) -> str | None:
    """``${VAR:-default}`` -> ``default``; a literal stays as it is."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value or "")
    return match.group(1) if match else value


def test_configmap_and_compose_set_only_real_settings_and_the_model_poll_interval_explicitly() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    data = configmap()
    compose = compose_environment(ROOT / "docker-compose.yml")
    for where, names in (("k8s/configmap.yaml", set(data)), ("docker-compose.yml", set(compose))):
        assert names <= known, f"{where} sets {sorted(names - known)}, which are not settings"
    Settings(**{k[len(ENV_PREFIX) :].lower(): v for k, v in data.items()})  # every ConfigMap value is valid
    assert float(data["FER_MODEL_POLL_INTERVAL_S"]) > 0
    assert float(compose_default(compose["FER_MODEL_POLL_INTERVAL_S"]) or "0") > 0


def test_the_model_volume_variants_mount_the_model_folder_read_only_with_scanning_on() -> None:
    # compose: docker compose -f docker-compose.yml -f docker-compose.models.yml
    override = yaml.safe_load((ROOT / "docker-compose.models.yml").read_text())["services"]["fer"]
    (volume,) = override["volumes"]
    source, target, mode = volume.rsplit(":", 2)
    environment = compose_environment(ROOT / "docker-compose.models.yml")
    assert mode == "ro" and environment["FER_MODEL_DIR"] == target
    assert float(compose_default(environment["FER_MODEL_POLL_INTERVAL_S"]) or "0") > 0
    assert (ROOT / (compose_default(source) or "")).is_dir()  # the default host folder is the shipped model's
    # kubernetes: the model-volume component
    component = ROOT / "k8s" / "components" / "model-volume"
    kustomization = yaml.safe_load((component / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    documents = [yaml.safe_load((component / name).read_text()) for name in kustomization["resources"]]
    documents += [yaml.safe_load((component / patch["path"]).read_text()) for patch in kustomization["patches"]]
    by_kind = {document["kind"]: document for document in documents}
    claim = by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    (pod_volume,) = pod["volumes"]
    assert mount["readOnly"] is True and mount["name"] == pod_volume["name"]
    assert pod_volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    data = by_kind["ConfigMap"]["data"]
    assert data["FER_MODEL_DIR"].startswith(mount["mountPath"] + "/")
    assert float(data["FER_MODEL_POLL_INTERVAL_S"]) > 0
    assert (
        by_kind["ConfigMap"]["metadata"]["name"]
        == yaml.safe_load((ROOT / "k8s" / "configmap.yaml").read_text())["metadata"]["name"]
    )
