"""The deploy files are checked, offline: YAML lint, Kubernetes schemas (strict: unknown fields
fail), the Compose specification, Ray Serve's config schema, and every townsquare environment
variable they set is a real setting with a valid value."""

from __future__ import annotations

import asyncio
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
    """What a platform engineer needs to apply them: probes, a disruption budget, an Ingress,
    a migration Job that prints no key, GPU tolerations and a model cache that survives."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    app = by_kind[("Deployment", "townsquare")]["spec"]["template"]["spec"]["containers"][0]
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    job = by_kind[("Job", "townsquare-migrate")]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["townsquare", "init", "--never-print-key"]
    model_set = by_kind[("StatefulSet", "model")]["spec"]
    model = model_set["template"]["spec"]["containers"][0]
    assert model["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert model_set["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # the weights' cache survives restarts: a claim per replica, not an emptyDir
    assert model_set["volumeClaimTemplates"][0]["metadata"]["name"] == "cache"
    assert {"cache"} <= {m["name"] for m in model["volumeMounts"]}
    assert {"Service", "PodDisruptionBudget", "Ingress"} <= {kind for kind, _ in by_kind}
    # a slow start is not killed by liveness; no volume that needs ReadWriteMany
    assert app["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "PersistentVolumeClaim" not in {kind for kind, _ in by_kind}
    secret = by_kind[("Secret", "townsquare")]["stringData"]
    assert {"TOWNSQUARE_WATERMARK__KEY", "TOWNSQUARE_ADMIN_KEY"} <= set(secret)


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


# --- every model name a deploy file asks for is one its server announces ------------------

# vLLM's tool-call parser for each model family the deploy files may name
TOOL_PARSERS = {
    "qwen2.5": "hermes",
    "hermes": "hermes",
    "llama-3": "llama3_json",
    "mistral": "mistral",
}


def _flag(args: list[str], name: str) -> list[str]:
    """The values after ``name`` in a command line (up to the next flag)."""
    if name not in args:
        return []
    values = []
    for value in args[args.index(name) + 1 :]:
        if value.startswith("--"):
            break
        values.append(value)
    return values


def vllm_problems(where: str, args: list[str]) -> tuple[set[str], list[str]]:
    """The names a vLLM command line announces, and what is wrong with its tool flags."""
    model = _flag(args, "--model")[0]
    problems = []
    if "--enable-auto-tool-choice" not in args:
        problems.append(
            f"{where}: vLLM refuses tool_choice 'auto' without --enable-auto-tool-choice"
        )
    family = next((f for f in TOOL_PARSERS if f in model.lower()), None)
    parser = _flag(args, "--tool-call-parser")
    if family is None or parser != [TOOL_PARSERS[family]]:
        problems.append(f"{where}: --tool-call-parser {parser} does not fit {model}")
    return set(_flag(args, "--served-model-name")) or {model}, problems


def _asked(value: str) -> tuple[str, str]:
    """(host, model name) of an ``openai:http://HOST:PORT/v1#NAME`` backend."""
    url, _, name = value.removeprefix("openai:").partition("#")
    return url.split("//", 1)[1].split(":", 1)[0].split("/", 1)[0], name


def model_name_problems(
    compose: dict[str, Any], kubernetes: list[dict[str, Any]], ray_announces: str
) -> list[str]:
    """Every mismatch between a model name a town asks for and what its server announces."""
    problems: list[str] = []
    # Compose: the server is the service named in the URL
    announced: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        command = [str(a) for a in service.get("command") or []]
        if "vllm" in str(service.get("image", "")):
            announced[name], found = vllm_problems(f"compose {name}", command)
            problems += found
        elif command[:2] == ["serve", "run"]:
            announced[name] = {ray_announces}
    for name, service in compose["services"].items():
        backend = (service.get("environment") or {}).get("TOWNSQUARE_TEXT__BACKEND", "")
        if backend.startswith("openai:"):
            host, model = _asked(backend)
            if model not in announced.get(host, set()):
                problems.append(
                    f"compose {name} asks {host} for '{model}', which announces "
                    f"{sorted(announced.get(host, set()))}"
                )
    # Kubernetes: the Service named in the URL selects the workload running vLLM
    services = {d["metadata"]["name"]: d for d in kubernetes if d["kind"] == "Service"}
    workloads = [d for d in kubernetes if d["kind"] in ("Deployment", "StatefulSet")]
    for doc in kubernetes:
        backend = (doc.get("data") or {}).get("TOWNSQUARE_TEXT__BACKEND", "")
        if not backend.startswith("openai:"):
            continue
        host, model = _asked(backend)
        selector = services[host]["spec"]["selector"]
        names: set[str] = set()
        for workload in workloads:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            if selector.items() <= labels.items():
                for container in workload["spec"]["template"]["spec"]["containers"]:
                    found_names, found = vllm_problems(f"kubernetes {host}", container["args"])
                    names |= found_names
                    problems += found
        if model not in names:
            problems.append(
                f"kubernetes asks {host} for '{model}', which announces {sorted(names)}"
            )
    return problems


def _ray_announces() -> str:
    """What deploy/ray/serve.yaml's model server lists on /v1/models, asked the real way."""
    from fastapi.testclient import TestClient

    from townsquare.backends.registry import build_text_backend
    from townsquare.serving import create_model_app

    (application,) = documents(DEPLOY / "ray" / "serve.yaml")[0]["applications"]
    settings = Settings(**application["args"]["settings"])
    backend = build_text_backend(settings.text)
    key = application["args"]["api_key"]
    with TestClient(create_model_app(settings, backend, key)) as client:
        listed = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    asyncio.run(backend.aclose())
    (entry,) = listed["data"]
    return str(entry["id"])


@pytest.mark.model
def test_every_model_name_a_deploy_file_asks_for_is_announced_by_its_server() -> None:
    compose = documents(DEPLOY / "compose.yaml")[0]
    kubernetes = [doc for _, doc in manifests()]
    ray_announces = _ray_announces()
    assert model_name_problems(compose, kubernetes, ray_announces) == []
    # the check fails on the two mistakes that shipped before (a 404 on every generation,
    # and vLLM refusing tool_choice "auto")
    broken = copy.deepcopy(compose)
    broken["services"]["app"]["environment"] = {
        "TOWNSQUARE_TEXT__BACKEND": f"openai:http://model:8000/v1#{ray_announces}.Q4_1"
    }
    assert any("announces" in p for p in model_name_problems(broken, kubernetes, ray_announces))
    no_tools = copy.deepcopy(kubernetes)
    for doc in no_tools:
        for container in (
            doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ):
            if "--enable-auto-tool-choice" in container.get("args", []):
                container["args"].remove("--enable-auto-tool-choice")
    assert any(
        "--enable-auto-tool-choice" in p
        for p in model_name_problems(compose, no_tools, ray_announces)
    )


# --- KubeRay: RayService and RayJob on the townsquare image ---------------------------------


def kuberay() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path in sorted((DEPLOY / "kuberay").glob("*.yaml"))
        for doc in documents(path)
    ]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return dict(spec["rayClusterConfig"] if doc["kind"] == "RayService" else spec["rayClusterSpec"])


@pytest.mark.parametrize(("name", "doc"), kuberay(), ids=[n for n, _ in kuberay()])
def test_kuberay_pods_follow_the_kubernetes_schemas_and_reserve_what_ray_is_told(
    name: str, doc: dict[str, Any]
) -> None:
    import kubernetes_validate
    import ray

    assert doc["apiVersion"] == "ray.io/v1"
    cluster = _cluster_spec(doc)
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray, not another
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "check"},
            "spec": group["template"]["spec"],
        }
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        (container,) = group["template"]["spec"]["containers"]
        image, _, tag = container["image"].rpartition(":")
        assert "/" in image and tag, "an image with a registry and a tag"
        cpus = int(group["rayStartParams"]["num-cpus"])
        if cpus:  # Ray schedules on what the container was given, no more
            assert int(container["resources"]["requests"]["cpu"]) == cpus


def test_the_rayservice_serves_the_same_application_as_deploy_ray() -> None:
    from ray.serve.schema import ServeDeploySchema

    (service,) = [d for _, d in kuberay() if d["kind"] == "RayService"]
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    plain = documents(DEPLOY / "ray" / "serve.yaml")[0]
    assert served["applications"] == plain["applications"]  # one application, two ways to run
    (job,) = [d for _, d in kuberay() if d["kind"] == "RayJob"]
    assert job["spec"]["entrypoint"].startswith("townsquare batch ")
