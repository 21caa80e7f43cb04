"""The step Job builder (operator/eva_operator/jobs.py): every field of the manifest."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
import yaml

from eva_operator.jobs import StepDefaults, build_job, job_name, run_dir
from eva_runtime.spec import EvaRun, load_runs, parse_run
from tiny_run import cluster_spec

META = {"name": "demo", "namespace": "team-a", "uid": "0f6c1c2e-uid"}
STEPS = ("prepare", "generate", "create", "generate-evolved", "train", "evaluate")


def make_run(spec: dict[str, Any] | None = None, name: str = "demo", **meta: Any) -> EvaRun:
    base = cluster_spec(spec, shards=3)
    head = {"apiVersion": "eva.dev/v1alpha1", "kind": "EvaRun"}
    return parse_run(
        head | {"metadata": {"name": name, "namespace": "team-a", **meta}, "spec": base}
    )


def job(step: str = "train", spec: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return build_job(make_run(spec), META, kw.pop("iteration", 1), step, **kw)


def pod(j: dict[str, Any]) -> dict[str, Any]:
    return j["spec"]["template"]["spec"]


def container(j: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod(j)["containers"]
    return c


def env(j: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container(j)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def test_job_name_is_run_iteration_step_with_retry_suffix() -> None:
    assert job_name("demo", 0, "prepare") == "demo-i0-prepare"
    assert job_name("demo", 2, "generate-evolved") == "demo-i2-generate-evolved"
    assert job_name("demo", 1, "train", 1) == "demo-i1-train-r1"
    assert job_name("demo", 1, "train", 3) == "demo-i1-train-r3"
    assert job("train", attempt=2)["metadata"]["name"] == "demo-i1-train-r2"
    assert job("evaluate", iteration=0)["metadata"]["name"] == "demo-i0-evaluate"


def test_long_run_names_are_hash_shortened_to_63_chars_and_stay_distinct() -> None:
    a, b = "x" * 55 + "-alpha", "x" * 55 + "-omega"
    for run in (a, b):
        name = job_name(run, 12, "generate-evolved", 4)
        assert len(name) <= 63
        assert name.endswith("-i12-generate-evolved-r4")
        assert name.startswith("xxxx")
    assert job_name(a, 0, "train") != job_name(b, 0, "train")
    assert job_name(a, 0, "train") == job_name(a, 0, "train")  # deterministic
    cut = job_name("a" * 44 + "-" + "b" * 30, 0, "train")  # the cut lands on a '-'
    assert len(cut) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cut)
    assert "--" not in cut
    full = make_run(name="y" * 63)
    assert len(build_job(full, META, 0, "generate")["metadata"]["name"]) <= 63


def test_labels_name_run_iteration_step_attempt_and_the_app() -> None:
    j = job("create", attempt=1)
    expected = {
        "app.kubernetes.io/name": "eva",
        "app.kubernetes.io/component": "step",
        "app.kubernetes.io/managed-by": "eva-operator",
        "eva.dev/run": "demo",
        "eva.dev/iteration": "1",
        "eva.dev/step": "create",
        "eva.dev/attempt": "1",
    }
    assert j["metadata"]["labels"] == expected
    assert j["spec"]["template"]["metadata"]["labels"] == expected
    assert j["metadata"]["namespace"] == "team-a"
    assert (j["apiVersion"], j["kind"]) == ("batch/v1", "Job")


def test_kueue_queue_label_only_when_queue_name_is_set() -> None:
    assert "kueue.x-k8s.io/queue-name" not in job()["metadata"]["labels"]
    j = job(spec={"resources": {"queueName": "gpu-queue"}})
    assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert j["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_owner_reference_is_the_controlling_evarun() -> None:
    assert job()["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "eva.dev/v1alpha1",
            "kind": "EvaRun",
            "name": "demo",
            "uid": "0f6c1c2e-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


@pytest.mark.parametrize("step", ["generate", "generate-evolved"])
def test_generation_step_is_an_indexed_job_with_one_pod_per_shard(step: str) -> None:
    s = job(step)["spec"]
    assert s["completionMode"] == "Indexed"
    assert s["completions"] == s["parallelism"] == 3
    assert s["backoffLimit"] == 0
    assert container(job(step))["args"][-2:] == ["--num-shards", "3"]


@pytest.mark.parametrize("step", ["prepare", "create", "train", "evaluate"])
def test_other_steps_are_single_pod_jobs_without_completion_mode(step: str) -> None:
    j = job(step)
    assert "completionMode" not in j["spec"]
    assert j["spec"]["completions"] == j["spec"]["parallelism"] == 1
    assert j["spec"]["backoffLimit"] == 0
    assert "--num-shards" not in container(j)["args"]


def test_command_and_args_run_the_phase_on_the_run_dir() -> None:
    c = container(job("train", iteration=1))
    assert c["command"] == ["eva"]
    run = "--run-dir /artifacts/team-a/demo --iteration 1"
    assert c["args"] == f"phase train {run} --termination-log /dev/termination-log".split()
    g = container(job("generate", spec={"storage": {"mountPath": "/data/eva/"}}, iteration=0))
    run = "--run-dir /data/eva/team-a/demo --iteration 0"
    tail = "--termination-log /dev/termination-log --num-shards 3"
    assert g["args"] == f"phase generate {run} {tail}".split()
    assert run_dir(make_run()) == "/artifacts/team-a/demo"


def test_active_deadline_only_when_given_and_ttl_from_run_policy() -> None:
    assert "activeDeadlineSeconds" not in job()["spec"]
    assert "ttlSecondsAfterFinished" not in job()["spec"]
    assert job(active_deadline_seconds=120)["spec"]["activeDeadlineSeconds"] == 120
    assert job(active_deadline_seconds=0)["spec"]["activeDeadlineSeconds"] == 1
    j = job(spec={"runPolicy": {"ttlSecondsAfterFinished": 3600}})
    assert j["spec"]["ttlSecondsAfterFinished"] == 3600


def test_gpu_limits_per_step_and_prepare_has_none_by_default() -> None:
    spec = {"resources": {"generate": {"gpus": 2}, "train": {"gpus": 4}, "evaluate": {"gpus": 1}}}
    gpus = {
        s: container(job(s, spec)).get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        for s in STEPS
    }
    # generate-evolved is sized by resources.generate
    assert gpus == dict(zip(STEPS, [None, "2", "1", "2", "4", "1"], strict=True))
    assert container(job("prepare"))["resources"] == {}
    assert "requests" not in container(job("train"))["resources"]
    custom = container(job("train", defaults=StepDefaults(gpu_resource="amd.com/gpu")))
    assert custom["resources"] == {"limits": {"amd.com/gpu": "1"}}


def test_cpu_and_memory_requests_equal_limits() -> None:
    c = container(job("train", {"resources": {"train": {"gpus": 2, "cpu": "8", "memory": "64Gi"}}}))
    assert c["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
    }
    p = container(job("prepare", {"resources": {"prepare": {"cpu": "500m"}}}))
    assert p["resources"] == {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}}


def test_image_from_spec_else_from_operator_defaults() -> None:
    d = StepDefaults(image="registry.local/eva:9", image_pull_policy="Always")
    assert container(job(defaults=d))["image"] == "registry.local/eva:9"
    assert container(job(defaults=d))["imagePullPolicy"] == "Always"
    assert container(job())["image"] == StepDefaults().image
    own = container(job(spec={"resources": {"image": "mine/eva:1"}}, defaults=d))
    assert own["image"] == "mine/eva:1"


def test_pod_placement_fields_spec_over_defaults() -> None:
    d = StepDefaults(
        image_pull_secrets=("ops-pull",),
        service_account_name="eva-steps",
        node_selector={"pool": "gpu", "zone": "a"},
        tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},),
        priority_class_name="low",
    )
    p = pod(job(defaults=d))
    assert p["imagePullSecrets"] == [{"name": "ops-pull"}]
    assert p["serviceAccountName"] == "eva-steps"
    assert p["nodeSelector"] == {"pool": "gpu", "zone": "a"}
    assert p["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert p["priorityClassName"] == "low"
    assert "affinity" not in p
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    own = {
        "resources": {
            "imagePullSecrets": ["mine-a", "mine-b"],
            "serviceAccountName": "runner",
            "nodeSelector": {"pool": "h100"},
            "tolerations": [{"key": "spot", "operator": "Equal", "value": "yes"}],
            "affinity": affinity,
            "priorityClassName": "high",
        }
    }
    p = pod(job(spec=own, defaults=d))
    assert p["imagePullSecrets"] == [{"name": "mine-a"}, {"name": "mine-b"}]
    assert p["serviceAccountName"] == "runner"
    assert p["nodeSelector"] == {"pool": "h100", "zone": "a"}
    assert p["tolerations"] == [{"key": "spot", "operator": "Equal", "value": "yes"}]
    assert p["affinity"] == affinity
    assert p["priorityClassName"] == "high"
    zonal = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    assert pod(job(defaults=replace(d, affinity=zonal)))["affinity"] == zonal
    assert pod(job(spec=own, defaults=replace(d, affinity=zonal)))["affinity"] == affinity
    bare = pod(job())
    for key in ("imagePullSecrets", "serviceAccountName", "nodeSelector", "tolerations"):
        assert key not in bare and "priorityClassName" not in bare


def test_credentials_arrive_only_as_secret_key_refs() -> None:
    def ref(name: str, key: str) -> dict[str, str]:
        return {"name": name, "key": key}

    def ep(secret: dict[str, str], **kw: str) -> dict[str, Any]:
        return {"baseUrl": "http://llm:8000/v1", "model": "m", "apiKeySecret": secret, **kw}

    shared, evolver = ref("eva-secrets", "k"), ref("evolver", "api-key")
    creds = ("hubToken", "hf", "token"), ("mlflowToken", "mlf", "token")
    creds += ("mlflowUsername", "mlf", "user"), ("mlflowPassword", "mlf", "password")
    spec = {
        "credentials": {field: ref(n, k) for field, n, k in creds},
        "generation": {"backend": "openai", "endpoint": ep(shared)},
        "creator": {
            "evolve": {"evolver": {"type": "openai", "endpoint": ep(evolver, apiKeyEnv="EVK")}}
        },
        "rewardModel": {"type": "judge", "function": None, "judgeEndpoint": ep(shared)},
    }
    j = job(spec=spec)
    e = env(j)

    def secret(name: str) -> dict[str, str]:
        assert "value" not in e[name]
        return e[name]["valueFrom"]["secretKeyRef"]

    assert secret("HF_TOKEN") == ref("hf", "token")
    assert secret("MLFLOW_TRACKING_TOKEN") == ref("mlf", "token")
    assert secret("MLFLOW_TRACKING_USERNAME") == ref("mlf", "user")
    assert secret("MLFLOW_TRACKING_PASSWORD") == ref("mlf", "password")
    assert secret("OPENAI_API_KEY") == shared  # shared by generation and judge: once
    assert secret("EVK") == evolver
    assert [x["name"] for x in container(j)["env"]].count("OPENAI_API_KEY") == 1
    from_secrets = {x["name"] for x in container(j)["env"] if "valueFrom" in x}
    assert from_secrets == {"HF_TOKEN", "OPENAI_API_KEY", "EVK"} | {
        f"MLFLOW_TRACKING_{k}" for k in ("TOKEN", "USERNAME", "PASSWORD")
    }
    for x in container(j)["env"]:
        assert set(x) in ({"name", "value"}, {"name", "valueFrom"})


def test_no_credential_env_without_credentials() -> None:
    e = env(job())
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_URI"):
        assert name not in e
    assert e["HOME"]["value"] == "/tmp"
    assert e["EVA_METRICS_PORT"]["value"] == "9090"


def test_mlflow_tracking_uri_from_spec_else_operator_default() -> None:
    d = StepDefaults(mlflow_tracking_uri="http://mlflow.ops:5000")
    assert env(job(defaults=d))["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.ops:5000"
    own = {"tracking": {"mlflow": {"trackingUri": "http://mine:5000"}}}
    assert env(job(spec=own, defaults=d))["MLFLOW_TRACKING_URI"]["value"] == "http://mine:5000"
    assert env(job(spec=own))["MLFLOW_TRACKING_URI"]["value"] == "http://mine:5000"
    assert "MLFLOW_TRACKING_URI" not in env(job())


def test_spec_yaml_env_parses_back_to_the_same_spec_with_bare_metadata(tmp_path: Any) -> None:
    spec = {
        "generation": {"temperature": 0.5, "systemPrompt": "Be brief."},
        "creator": {"sampleFraction": 0.5},
        "resources": {"train": {"gpus": 2, "memory": "32Gi"}, "queueName": "q"},
        "runPolicy": {"backoffLimit": 1},
        "credentials": {"hubToken": {"name": "hf", "key": "token"}},
    }
    original = make_run(spec)
    with_meta = make_run(spec, uid="u", labels={"a": "b"}, resourceVersion="7")
    text = env(build_job(with_meta, META, 0, "prepare"))["EVA_SPEC_YAML"]["value"]
    doc = yaml.safe_load(text)
    assert doc["metadata"] == {"name": "demo", "namespace": "team-a"}
    assert parse_run(doc).spec == original.spec
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    (back,) = load_runs(path)
    assert back.spec == original.spec
    assert (back.name, back.namespace) == ("demo", "team-a")


def test_pods_are_hardened_and_report_through_the_termination_log() -> None:
    p = pod(job())
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["fsGroup"] == 1000
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(job())["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["privileged"] is False
    assert p["restartPolicy"] == "Never"
    assert p["automountServiceAccountToken"] is False
    c = container(job())  # the summary is read from the log file, else the logs
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_volumes_are_scratch_dirs_and_the_artifact_claim() -> None:
    j = job(spec={"storage": {"claimName": "shared-rwx", "mountPath": "/mnt/eva"}})
    assert pod(j)["volumes"] == [
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "shared-rwx"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = {m["mountPath"]: m["name"] for m in container(j)["volumeMounts"]}
    assert mounts == {"/mnt/eva": "artifacts", "/tmp": "tmp", "/cache": "cache", "/dev/shm": "dshm"}


def test_hub_models_live_on_one_shared_cache_and_only_prepare_reaches_the_hub() -> None:
    # No model-cache claim anywhere: the artifact claim's .cache folder, shared by every step
    # (and every run on that claim); nothing extra mounted.
    j = job("generate", spec={"storage": {"mountPath": "/mnt/eva"}})
    e = env(j)
    assert e["HF_HOME"]["value"] == "/mnt/eva/.cache/huggingface"
    assert e["EVA_CACHE_DIR"]["value"] == "/mnt/eva/.cache/eva"
    assert "models" not in {v["name"] for v in pod(j)["volumes"]}
    # The install's claim (chart modelCache.*), mounted at /models in every step pod ...
    d = StepDefaults(model_cache_claim="hub-cache")
    for step in STEPS:
        j = job(step, defaults=d)
        vols = {v["name"]: v for v in pod(j)["volumes"]}
        assert vols["models"] == {
            "name": "models",
            "persistentVolumeClaim": {"claimName": "hub-cache"},
        }
        mounts = {m["name"]: m["mountPath"] for m in container(j)["volumeMounts"]}
        assert mounts["models"] == "/models"
        assert env(j)["HF_HOME"]["value"] == "/models/huggingface"
        # ... and only prepare, which downloads the spec's hub models, may reach the hub.
        offline = env(j).get("HF_HUB_OFFLINE", {}).get("value")
        assert offline == (None if step == "prepare" else "1"), step
    # A run's own claim wins over the install's.
    j = job("train", spec={"storage": {"modelCacheClaim": "team-models"}}, defaults=d)
    vols = {v["name"]: v for v in pod(j)["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "team-models"}


def test_claim_from_spec_else_default_else_value_error() -> None:
    d = StepDefaults(claim_name="ops-claim")
    no_claim = {"storage": {"claimName": None}}
    claim = pod(job(spec=no_claim, defaults=d))["volumes"][0]["persistentVolumeClaim"]
    assert claim == {"claimName": "ops-claim"}
    claim = pod(job(defaults=d))["volumes"][0]["persistentVolumeClaim"]
    assert claim == {"claimName": "eva-artifacts"}
    with pytest.raises(ValueError, match=r"spec\.storage\.claimName"):
        job(spec=no_claim)


def all_jobs() -> list[dict[str, Any]]:
    spec = {
        "resources": {
            "queueName": "q",
            "nodeSelector": {"a": "b"},
            "tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 30}],
            "train": {"cpu": "4", "memory": "8Gi"},
        },
        "runPolicy": {"ttlSecondsAfterFinished": 60},
        "credentials": {"hubToken": {"name": "hf", "key": "t"}},
    }
    d = StepDefaults(mlflow_tracking_uri="http://m", pushgateway_url="http://pg:9091")
    return [
        build_job(make_run(spec), META, 1, s, 1, defaults=d, active_deadline_seconds=99)
        for s in STEPS
    ]


def test_every_job_is_json_serializable() -> None:
    for j in all_jobs():
        assert json.loads(json.dumps(j)) == j
        assert pod(j)["tolerations"] == [
            {"key": "k", "operator": "Exists", "tolerationSeconds": 30}
        ]


def test_every_job_is_valid_against_the_kubernetes_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for j in all_jobs():
        kv.validate(j, "1.30", strict=True)
