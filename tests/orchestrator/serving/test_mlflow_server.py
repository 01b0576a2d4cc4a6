"""`maskx mlflow-server`'s command line: 127.0.0.1 unless told otherwise, one person's sqlite by
default, a team's PostgreSQL, S3 and logins on request, and no secret on any command line (the
session's `team_server` fixture runs the team set-up for real)."""
import configparser
import os
import stat

import pytest

from maskx.orchestrator.cli import build_parser
from maskx.orchestrator.serving.tracking_server import ServerSetup, server_command


def setup_of(argv):
    args = build_parser().parse_args(["mlflow-server", *argv])
    return ServerSetup(store=args.store, host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
                       artifacts_destination=args.artifacts_destination, auth=args.auth,
                       admin_password_file=args.admin_password_file, auth_database_uri=args.auth_database_uri,
                       default_permission=args.default_permission, workers=args.workers)


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
