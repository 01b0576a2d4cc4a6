"""`maskx mlflow-server`'s command line: 127.0.0.1 unless told otherwise, one person's sqlite by
default, a team's PostgreSQL, S3 and logins on request, and no secret on any command line (the
session's `team_server` fixture runs the team set-up for real)."""
import configparser
import os
import stat

import pytest

from maskx.orchestrator.cli import build_parser, server_setup
from maskx.orchestrator.tracking.server import server_command


def setup_of(argv):
    return server_setup(build_parser().parse_args(["mlflow-server", *argv]))


def test_one_person_s_server_binds_localhost_on_sqlite_and_a_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    command, environment = server_command(setup_of(["--store", str(tmp_path)]))
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    assert "--app-name" not in command and environment == {}


def test_a_team_s_server_logs_in_on_postgres_and_s3_with_its_secrets_off_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    (tmp_path / "admin").write_text("first-admin-password\n")
    database = "postgresql://mlflow@db.internal:5432/mlflow"
    command, environment = server_command(setup_of(
        ["--store", str(tmp_path / "store"), "--backend-store-uri", database, "--artifacts-destination", "s3://team/mlflow",
         "--auth", "--admin-password-file", str(tmp_path / "admin")]))
    assert command[command.index("--backend-store-uri") + 1] == database
    assert command[command.index("--artifacts-destination") + 1] == "s3://team/mlflow"
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == "first-admin-password"
    assert not any("first-admin-password" in part or environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] in part for part in command)
    config = configparser.ConfigParser()
    config.read(environment["MLFLOW_AUTH_CONFIG_PATH"])
    assert config["mlflow"]["database_uri"] == database and config["mlflow"]["default_permission"] == "READ"
    # The generated session key stays the same across restarts and is readable by its owner only.
    key_file = tmp_path / "store" / "flask_secret_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert server_command(setup_of(["--store", str(tmp_path / "store"), "--auth"]))[1]["MLFLOW_FLASK_SERVER_SECRET_KEY"] \
        == environment["MLFLOW_FLASK_SERVER_SECRET_KEY"]


def test_a_database_password_on_the_command_line_is_refused_and_one_from_the_environment_stays_off_it(tmp_path,
                                                                                                      monkeypatch):
    with pytest.raises(ValueError, match="--backend-store-uri: holds a password, .* PGPASSWORD or ~/.pgpass"):
        server_command(setup_of(["--store", str(tmp_path), "--backend-store-uri", "postgresql://mlflow:hunter2@db/mlflow"]))
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:hunter2@db/mlflow")
    command, _ = server_command(setup_of(["--store", str(tmp_path)]))
    assert "--backend-store-uri" not in command and not any("hunter2" in part for part in command)


def test_beyond_loopback_logins_are_required_unless_refused_loudly(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    store = ["--store", str(tmp_path)]
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        server_command(setup_of([*store, "--host", host]))
    with pytest.raises(ValueError, match="--host 0.0.0.0: other machines can reach it.*add --auth.*--insecure-no-auth"):
        server_command(setup_of([*store, "--host", "0.0.0.0"]))
    with pytest.warns(UserWarning, match="takes no logins"):
        command, _ = server_command(setup_of([*store, "--host", "10.0.0.5", "--insecure-no-auth"]))
    assert command[command.index("--host") + 1] == "10.0.0.5"
    with pytest.warns(UserWarning, match="--default-permission EDIT: every user may edit"):
        server_command(setup_of([*store, "--host", "10.0.0.5", "--auth", "--default-permission", "EDIT"]))


def test_the_names_clients_use_are_added_to_mlflow_s_allowed_hosts(tmp_path, monkeypatch):
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    command, _ = server_command(setup_of(["--store", str(tmp_path), "--allowed-hosts", "mlflow.internal, mlflow:5000",
                                          "--cors-allowed-origins", "https://dash.example.com"]))
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert is_allowed_host_header(allowed, "mlflow.internal:5000") and is_allowed_host_header(allowed, "mlflow:5000")
    assert not is_allowed_host_header(allowed, "mlflow:6000") and not is_allowed_host_header(allowed, "evil.example")
    assert set(get_default_allowed_hosts()) <= set(allowed)  # localhost (port-forward) and private IPs still answer
    assert command[command.index("--cors-allowed-origins") + 1] == "https://dash.example.com"
    assert "--allowed-hosts" not in server_command(setup_of(["--store", str(tmp_path)]))[0]


def test_the_login_config_is_the_owner_s_alone_and_holds_no_database_password(tmp_path, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:s3cr%40t@db.internal:5432/mlflow")
    (tmp_path / "basic_auth.ini").write_text("[mlflow]\n")
    os.chmod(tmp_path / "basic_auth.ini", 0o644)  # written before by an older maskx
    command, environment = server_command(setup_of(["--store", str(tmp_path), "--auth"]))
    path = environment["MLFLOW_AUTH_CONFIG_PATH"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert "s3cr" not in text and "database_uri = postgresql://mlflow@db.internal:5432/mlflow" in text
    assert environment["PGPASSWORD"] == "s3cr@t" and not any("s3cr" in part for part in command)
