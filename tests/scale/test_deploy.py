"""The deploy files are checked, offline: YAML lint, Kubernetes schemas (strict: unknown fields
fail), the Compose specification, Ray Serve's config schema, and every townsquare environment
variable they set is a real setting with a valid value."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from townsquare.settings import Settings, env_name, iter_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.32.0"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for doc in documents(path)
    ]


def test_yaml_lint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(DEPLOY / "yamllint.yaml"), str(DEPLOY)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[n for n, _ in manifests()])
def test_kubernetes_manifests_follow_the_schemas(name: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_check_catches_mistakes() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    deployment = next(d for _, d in manifests() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_app_is_ready_on_readyz_migrated_by_a_job_and_the_model_asks_for_a_gpu() -> None:
    by_kind = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    app = by_kind[("Deployment", "townsquare")]["spec"]["template"]["spec"]["containers"][0]
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    job = by_kind[("Job", "townsquare-migrate")]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["townsquare", "init"]
    model = by_kind[("Deployment", "model")]["spec"]["template"]["spec"]["containers"][0]
    assert model["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"Service"} <= {kind for kind, _ in by_kind}


def compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker is not None, "check-jsonschema is installed with the test extra"
    return subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    done = compose_check(DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    compose = documents(DEPLOY / "compose.yaml")[0]
    assert {"postgres", "redis", "app", "model", "balancer", "migrate"} <= set(compose["services"])
    assert compose["services"]["app"]["deploy"]["replicas"] >= 2
    # and the check is real: a misspelt key fails it
    compose["services"]["app"]["depends_onn"] = ["redis"]
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    assert compose_check(broken).returncode != 0


def test_ray_serve_config_builds_the_application() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = documents(DEPLOY / "ray" / "serve.yaml")[0]
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    module, _, attribute = application["import_path"].partition(":")
    builder = getattr(__import__(module, fromlist=[attribute]), attribute)
    Settings(**application["args"]["settings"])  # the replica's settings are valid
    assert builder(application["args"]) is not None  # a Serve application, ready to deploy


def environment_variables() -> dict[str, str]:
    """Every TOWNSQUARE_ variable the deploy files set, with its value."""
    found: dict[str, str] = {}
    compose = documents(DEPLOY / "compose.yaml")[0]
    for service in compose["services"].values():
        found.update(service.get("environment") or {})
    for _, doc in manifests():
        found.update(doc.get("data") or {})
        found.update(doc.get("stringData") or {})
        for container in (
            doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            found.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    for application in documents(DEPLOY / "ray" / "serve.yaml")[0]["applications"]:
        found.update(application.get("runtime_env", {}).get("env_vars", {}))
    return {k: str(v) for k, v in found.items() if k.startswith("TOWNSQUARE_")}


def test_every_environment_variable_is_a_real_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {env_name(name) for name, _, _ in iter_settings(Settings)}
    variables = environment_variables()
    assert len(variables) >= 10
    assert sorted(set(variables) - known) == []
    for name, value in variables.items():  # and each value is valid for its setting
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.quotas.store == "redis"
    assert settings.routing.pools["batch"].concurrency == 16
