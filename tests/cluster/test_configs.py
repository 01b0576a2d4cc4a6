"""The cluster configs pass Ray's own validation and say what a secure maskx cluster needs: token
auth, a dashboard not exposed outside, no training on the head, S3 by role, the maskx entrypoint."""
import copy
import os
import shlex

import pytest
import yaml

from maskx.orchestrator.cli import build_parser
from maskx.orchestrator.config import load_config

CLUSTER = os.path.join(os.path.dirname(__file__), "..", "..", "cluster")
REPO = os.path.join(CLUSTER, "..")


def read(name):
    with open(os.path.join(CLUSTER, name)) as f:
        return yaml.safe_load(f)


def test_aws_launcher_config_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = read("aws.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's schema; no cloud call

    broken = copy.deepcopy(config)
    broken["available_node_types"]["g5-spot"]["min_worker"] = 1  # a typo Ray must reject
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_aws_cluster_is_token_authenticated_with_a_local_dashboard_and_spot_gpus():
    config = read("aws.yaml")
    head, workers = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    # The MLflow user's credentials reach every node from a file, into Ray's environment, not a config.
    assert config["file_mounts"]["~/.maskx/mlflow.env"] == "~/.maskx/mlflow.env"
    assert all(". ~/.maskx/mlflow.env" in commands for commands in (head, workers))
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["~/.ray/auth_token"]  # the same token on every node
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for t in types if t != config["head_node_type"]]
    assert any(types[t]["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu_types)
    assert all("IamInstanceProfile" in types[t]["node_config"] for t in types)  # S3 by role, no keys
    assert any("constraints.txt" in c for c in config["setup_commands"])
    text = open(os.path.join(CLUSTER, "aws.yaml")).read()
    assert "aws_access_key_id" not in text.lower() and "AWS_SECRET" not in text


def test_kuberay_rayjob_runs_maskx_train_on_an_authenticated_gpu_cluster():
    job = read("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "maskx"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train"
    cfg = load_config(os.path.join(REPO, args.config))  # the config it names exists and is valid
    # A retried job (backoffLimit) continues its run from S3 instead of starting another at iteration 0.
    assert spec["backoffLimit"] > 0 and args.run_name == job["metadata"]["name"] and not args.resume
    assert cfg.checkpoint.storage_path.startswith("s3://") or "checkpoint.storage_path=s3://" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == __import__("ray").__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    pods = [head["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]] + [spec["submitterPodTemplate"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "maskx-ray-token"
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # MLflow's own variables
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "maskx-mlflow-user"
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]


def test_the_team_mlflow_server_runs_maskx_on_postgres_and_s3_with_logins_and_every_secret_from_a_secret():
    from maskx.orchestrator.tracking.server import ServerSetup, server_command

    with open(os.path.join(CLUSTER, "mlflow-server.yaml")) as f:
        documents = {d["kind"]: d for d in yaml.safe_load_all(f)}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [server] = pod["containers"]
    assert server["command"][:2] == ["maskx", "mlflow-server"]
    args = build_parser().parse_args(server["command"][1:])
    assert args.backend_store_uri.startswith("postgresql://") and args.artifacts_destination.startswith("s3://")
    assert args.auth and args.host == "0.0.0.0" and documents["Service"]["spec"]["type"] == "ClusterIP"
    server_command(ServerSetup(store="/tmp/maskx-test-store", backend_store_uri=args.backend_store_uri))  # no password in it
    [upgrade] = pod["initContainers"]
    assert upgrade["command"][:3] == ["mlflow", "db", "upgrade"] and upgrade["command"][3] == args.backend_store_uri
    for container in (server, upgrade):
        env = {e["name"]: e for e in container["env"]}
        assert set(env) == {"PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
        assert all("secretKeyRef" in e["valueFrom"] for e in env.values())
    job = read("kuberay-rayjob.yaml")
    tracking = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]
    service = documents["Service"]["metadata"]
    assert tracking == f"http://{service['name']}.{service['namespace']}.svc.cluster.local:5000"
    # MLflow refuses Host headers it is not given (403): the name the jobs use must be among them.
    from maskx.orchestrator.cli import split_names

    assert f"{service['name']}.{service['namespace']}.svc.cluster.local" in split_names(args.allowed_hosts)


@pytest.mark.parametrize("name", ["runtime_env.yaml", "runtime_env_elastic.yaml"])
def test_runtime_env_is_one_ray_accepts_and_carries_no_secret(name):
    from ray.runtime_env import RuntimeEnv

    env = read(name)
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert not [k for k in env["env_vars"] if any(s in k.upper() for s in ("SECRET", "TOKEN", "PASSWORD", "KEY"))]
    # a fixed-size run waits for the autoscaler's replacement node; an elastic one goes on without it
    assert float(env["env_vars"]["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]) == (30 if "elastic" in name else 900)


def test_dockerfile_copies_everything_the_wheel_build_reads():
    from ..test_install import SOURCES

    with open(os.path.join(CLUSTER, "Dockerfile")) as f:
        copied = {word for line in f if line.startswith("COPY") for word in line.split()[1:-1] if not word.startswith("--")}
    assert set(SOURCES) <= copied


def test_gpu_nodes_that_have_efa_use_it_and_nccl_is_told_to():
    """p4d and p5 reach each other over EFA on 4 network cards in one placement group; every runtime env
    (and the RayJob's) points NCCL's libfabric at EFA with GPUDirect RDMA and fork safety; the RayJob's
    workers ask the EFA device plugin for the devices (docs/cluster.md, "EFA")."""
    config = read("aws.yaml")
    for group in ("p4d-spot", "p5-ondemand"):
        node = config["available_node_types"][group]["node_config"]
        interfaces = node["NetworkInterfaces"]
        assert [i["InterfaceType"] for i in interfaces] == ["efa"] * 4
        assert sorted(i["NetworkCardIndex"] for i in interfaces) == [0, 1, 2, 3]
        assert [i["DeviceIndex"] for i in interfaces] == [0, 1, 1, 1]  # AWS: device 0 on card 0 only
        assert node["Placement"]["GroupName"]
    job = read("kuberay-rayjob.yaml")
    envs = [read(name)["env_vars"] for name in ("runtime_env.yaml", "runtime_env_elastic.yaml")]
    envs.append(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"])
    for env in envs:
        assert (env["FI_PROVIDER"], env["FI_EFA_USE_DEVICE_RDMA"], env["FI_EFA_FORK_SAFE"]) == ("efa", "1", "1")
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["vpc.amazonaws.com/efa"] == "4"
