"""Deployment manifests, checked for structure (no container engine or cluster runs here):
the services and fields a deployment needs, GPUs where rendering runs, secrets only by
reference, and flywheel configs that load with the real schema."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from flywheel.core.config import load_config

INFRA = Path(__file__).resolve().parent.parent / "infra"
SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", re.I)


def _env_items(env):
    if isinstance(env, dict):
        return list(env.items())
    return [(e["name"], e.get("value", e.get("valueFrom"))) for e in env or []]


def test_compose_single_gpu_host():
    spec = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = spec["services"]
    assert {"s3", "postgres", "mlflow", "prefect-server", "prefect-worker", "ray-head", "ray-worker"} <= set(services)
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "--artifacts-destination" in services["mlflow"]["command"]
    assert services["prefect-worker"]["environment"]["PREFECT_API_URL"].startswith("http://prefect-server")
    for name, svc in services.items():
        for key, value in _env_items(svc.get("environment")):
            if SECRET_NAMES.search(key):  # a secret is a ${VAR} reference, never a value
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), f"{name}: {key} holds a value"
    for name, svc in services.items():
        for part in svc.get("command", []) if isinstance(svc.get("command"), list) else []:
            assert "://flywheel:" not in part or "${POSTGRES_PASSWORD}" in part, f"{name}: literal password"
    cfg = load_config(INFRA / "flywheel-cluster.yaml", environ={})
    assert cfg.render.device == "GPU" and cfg.ray.address == "ray-head:6379" and cfg.store.root.startswith("s3://")


def test_kubernetes_manifests(tmp_path):
    docs = [d for d in yaml.safe_load_all((INFRA / "k8s" / "flywheel.yaml").read_text()) if d]
    for d in docs:
        assert d["apiVersion"] and d["kind"] and d["metadata"]["name"]
        assert d["kind"] != "Secret", "secrets come from the platform's secret store"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("RayCluster", "flywheel-ray"),
        ("Deployment", "mlflow"),
        ("Deployment", "prefect-worker"),
        ("ConfigMap", "flywheel-config"),
        ("Service", "mlflow"),
    } <= kinds
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    assert ray["apiVersion"] == "ray.io/v1" and ray["spec"]["rayVersion"] == "2.60.0"
    worker = ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = dict(_env_items(worker["env"]))
    assert env["RAY_AUTH_MODE"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]
    for d in docs:  # every secret-looking variable is a secretKeyRef
        pods = [d["spec"]["template"]["spec"]] if d["kind"] == "Deployment" else []
        if d["kind"] == "RayCluster":
            pods = [d["spec"]["headGroupSpec"]["template"]["spec"]] + [
                g["template"]["spec"] for g in d["spec"]["workerGroupSpecs"]
            ]
        for pod in pods:
            for c in pod["containers"]:
                for key, value in _env_items(c.get("env")):
                    if SECRET_NAMES.search(key) or key.endswith("_DB_URL"):
                        assert isinstance(value, dict) and "secretKeyRef" in value, f"{d['metadata']['name']}: {key}"
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["flywheel.yaml"]
    path = tmp_path / "flywheel.yaml"
    path.write_text(config)
    cfg = load_config(path, environ={})
    assert cfg.render.actor_num_gpus == 0.5 and cfg.mlflow.tracking_uri.startswith("http://mlflow")


def test_a_round_as_a_rayjob_trains_on_the_clusters_gpus():
    """The RayJob runs a round on the RayCluster of flywheel.yaml with its training stages on
    Ray Train GPU workers; its overrides are real config fields; secrets only by reference."""
    job = yaml.safe_load((INFRA / "k8s" / "rayjob-round.yaml").read_text())
    cluster = next(
        d for d in yaml.safe_load_all((INFRA / "k8s" / "flywheel.yaml").read_text()) if d and d["kind"] == "RayCluster"
    )
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["entrypoint"].startswith("flywheel run ")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    cfg = load_config(environ={k: v for k, v in env.items() if k.startswith("FLYWHEEL__")})
    assert cfg.model.train_workers == 4 and cfg.model.use_gpu and cfg.model.device == "cuda"
    assert cfg.model.train_workers <= cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    tokens = dict(_env_items(submitter["env"]))
    assert tokens["RAY_AUTH_MODE"] == "token" and "secretKeyRef" in tokens["RAY_AUTH_TOKEN"]
