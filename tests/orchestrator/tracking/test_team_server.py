"""The team's tracking server (`team_server`: PostgreSQL, artifacts proxied to S3, MLflow's logins),
for real: who may do what, and a database killed outright loses nothing it committed. Training,
registration, `maskx eval` and `mlflow models serve` through it with a user's credentials are in
test_job_submit.py and test_serving.py, which use it as the session's server."""

import boto3
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.tracking]


def client_as(team_server, user, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    return mlflow.MlflowClient(team_server.uri)


@pytest.mark.core
def test_only_a_user_with_permission_writes_and_moves_the_champion_alias(team_server, monkeypatch, tmp_path):
    from mlflow.exceptions import MlflowException

    alice = client_as(team_server, team_server.user, monkeypatch)
    experiment = alice.create_experiment("team-permissions")
    run = alice.create_run(experiment)
    alice.log_metric(run.info.run_id, "segm/setB/AP", 0.25, step=1)
    (tmp_path / "card.md").write_text("a model")
    alice.log_artifact(run.info.run_id, str(tmp_path / "card.md"))
    alice.create_registered_model("team-model")
    version = alice.create_model_version("team-model", f"runs:/{run.info.run_id}/card.md", run_id=run.info.run_id)
    alice.set_registered_model_alias("team-model", "champion", version.version)

    # No credentials, or wrong ones: 401, and nothing is written.
    api = f"{team_server.uri}/api/2.0/mlflow"
    assert requests.post(f"{api}/experiments/create", json={"name": "anonymous"}, timeout=30).status_code == 401
    assert requests.post(f"{api}/experiments/create", json={"name": "anonymous"}, timeout=30,
                         auth=(team_server.user[0], "not-the-password")).status_code == 401
    assert alice.get_experiment_by_name("anonymous") is None

    # Another user reads (the default permission) but neither logs into the run nor moves the alias.
    bob = client_as(team_server, team_server.other_user, monkeypatch)
    assert bob.get_run(run.info.run_id).data.metrics == {"segm/setB/AP": 0.25}
    for write in (lambda: bob.log_metric(run.info.run_id, "segm/setB/AP", 0.9, step=2),
                  lambda: bob.set_registered_model_alias("team-model", "champion", "1"),
                  lambda: bob.delete_registered_model_alias("team-model", "champion")):
        with pytest.raises(MlflowException, match="403"):
            write()
    alice = client_as(team_server, team_server.user, monkeypatch)
    assert [m.value for m in alice.get_metric_history(run.info.run_id, "segm/setB/AP")] == [0.25]
    assert alice.get_model_version_by_alias("team-model", "champion").version == version.version

    # The artifact went through the server to S3: the client holds no S3 credentials for that bucket.
    s3 = boto3.client("s3", endpoint_url=team_server.s3_endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                      region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=team_server.artifacts_bucket).get("Contents", [])]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/card.md") for key in keys), keys


def test_the_database_killed_outright_and_restarted_on_its_folder_has_everything_it_committed(team_server, monkeypatch,
                                                                                             tmp_path):
    """SIGKILL to PostgreSQL and all its backends (no shutdown, no checkpoint), then a start on the same
    data folder: every run, metric, user and alias committed before is there, and a client that
    wrote while it was down got through once it was back (MLflow's retries)."""
    import threading
    import time

    alice = client_as(team_server, team_server.user, monkeypatch)
    run = alice.create_run(alice.create_experiment("team-database-killed"))
    for step in range(5):
        alice.log_metric(run.info.run_id, "loss/loss", 1.0 / (step + 1), step=step)
    (tmp_path / "card.md").write_text("a model")
    alice.log_artifact(run.info.run_id, str(tmp_path / "card.md"))
    alice.create_registered_model("team-killed-model")
    version = alice.create_model_version("team-killed-model", f"runs:/{run.info.run_id}/card.md", run_id=run.info.run_id)
    alice.set_registered_model_alias("team-killed-model", "champion", version.version)
    team_server.postgres.stop(kill=True)
    restarted = {}

    def restart():
        restarted["at"] = time.monotonic()  # no write can commit before this
        team_server.postgres.start()

    restarter = threading.Timer(3.0, restart)
    restarter.start()
    alice.log_metric(run.info.run_id, "loss/loss", 0.1, step=5)  # while the database is down
    returned_at = time.monotonic()
    restarter.join()
    # The write waited for the database: it returned after the restart began, not before it.
    assert "at" in restarted and returned_at > restarted["at"], (returned_at, restarted)
    assert [m.step for m in alice.get_metric_history(run.info.run_id, "loss/loss")] == list(range(6))
    assert alice.get_model_version_by_alias("team-killed-model", "champion").version == version.version
    bob = client_as(team_server, team_server.other_user, monkeypatch)
    assert bob.get_run(run.info.run_id).info.run_id == run.info.run_id  # the users survived too
    assert "OperationalError" in open(team_server.log).read()  # the server did see it gone


@pytest.mark.core
def test_credentials_in_the_tracking_uri_log_in_and_reach_no_param_tag_or_logged_config(team_server, monkeypatch):
    """`mlflow.tracking_uri: http://USER:PASSWORD@host` (they replace MLflow's variables in every
    request) works, and the password is redacted wherever maskx writes the config or the store."""
    import mlflow

    from maskx.orchestrator.config import TrainConfig, dump_config
    from maskx.orchestrator.tracking.store import Tracking

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    user, password = team_server.user
    uri = team_server.uri.replace("http://", f"http://{user}:{password}@")
    cfg = TrainConfig()
    cfg.mlflow.tracking_uri = uri
    tracking = Tracking(uri)
    run = tracking.start_run("team-uri-credentials", "uri", cfg.to_dict(), dump_config(cfg), tags={"store": uri})
    logged = mlflow.MlflowClient(uri).get_run(run.run_id)
    config_yaml = open(mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="config.yaml",
                                                           tracking_uri=uri)).read()
    assert logged.data.params["mlflow.tracking_uri"] == team_server.uri.replace("http://", "http://***@")
    for text in (str(logged.data.params), str(logged.data.tags), config_yaml, tracking.redacted_uri):
        assert password not in text


@pytest.mark.core
def test_the_server_answers_the_name_it_is_given_and_refuses_other_host_headers(team_server):
    """MLflow 3.17 answers Host headers other than localhost and private IPs with 403 (its DNS-rebinding
    guard) while /health stays green: a cluster's own Service name must be given (--allowed-hosts)."""
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    from ...conftest import TEAM_SERVER_NAME

    port = team_server.uri.rsplit(":", 1)[1]
    named = f"{TEAM_SERVER_NAME}:{port}"
    assert not is_allowed_host_header(get_default_allowed_hosts(), named)  # MLflow alone would refuse it

    def status_as(host):
        return requests.get(f"{team_server.uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                            headers={"Host": host}, auth=team_server.user, timeout=30).status_code

    assert status_as(named) == 200 and status_as(f"localhost:{port}") == 200
    assert status_as(f"mlflow.attacker.example:{port}") == 403
