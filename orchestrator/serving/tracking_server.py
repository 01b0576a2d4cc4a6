"""`maskx mlflow-server`: MLflow's own tracking server, set up for one person (sqlite and an
artifact folder under `--store`) or for a team (PostgreSQL, artifacts proxied to S3, MLflow's
basic-auth app with users and permissions).

Secrets never go on a command line (every user of the host sees it in `ps`): the database password
comes from PGPASSWORD or ~/.pgpass (libpq's own), the admin's first password from
MLFLOW_AUTH_ADMIN_PASSWORD or a file, the session key from MLFLOW_FLASK_SERVER_SECRET_KEY or a file
generated in the store, S3 credentials from the server host's AWS credential chain.
"""
from __future__ import annotations

import configparser
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

AUTH_CONFIG_FILE = "basic_auth.ini"
SECRET_KEY_FILE = "flask_secret_key"
ADMIN_USERNAME = "admin"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
# MLflow checks a password with PBKDF2 on every request unless told to cache a check that passed:
# training logs many small requests. A password changed or a user deleted through another server
# worker takes this long to reach this one (permissions are never cached).
AUTH_CACHE_TTL_S = 60


@dataclass
class ServerSetup:
    store: str  # a folder: the sqlite store and artifacts when no others are given, the auth config
    host: str = "127.0.0.1"
    port: int = 5000
    backend_store_uri: Optional[str] = None  # default: $MLFLOW_BACKEND_STORE_URI, else sqlite in the store
    artifacts_destination: Optional[str] = None  # s3://bucket/prefix; default: a folder in the store
    auth: bool = False
    admin_password_file: Optional[str] = None
    auth_database_uri: Optional[str] = None  # users and permissions; default: the backend store's database
    default_permission: str = "READ"  # what a user may do with others' experiments and models
    workers: int = 1


def server_command(setup: ServerSetup) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and the environment variables to add for it."""
    store = os.path.abspath(setup.store)
    os.makedirs(store, exist_ok=True)
    refuse_password_in("--backend-store-uri", setup.backend_store_uri)
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [mlflow_bin, "server", "--host", setup.host, "--port", str(setup.port),
               "--artifacts-destination", artifacts_destination(setup), "--workers", str(setup.workers)]
    if not from_environment(setup):  # MLflow reads $MLFLOW_BACKEND_STORE_URI itself: it stays off the command line
        command += ["--backend-store-uri", backend_store_uri(setup)]
    environment: dict[str, str] = {}
    if setup.auth:
        command += ["--app-name", "basic-auth"]
        environment = auth_environment(setup, store, backend_store_uri(setup))
    return command, environment


def from_environment(setup: ServerSetup) -> bool:
    return not setup.backend_store_uri and bool(os.environ.get("MLFLOW_BACKEND_STORE_URI"))


def backend_store_uri(setup: ServerSetup) -> str:
    if from_environment(setup):
        return os.environ["MLFLOW_BACKEND_STORE_URI"]
    return setup.backend_store_uri or f"sqlite:///{os.path.abspath(setup.store)}/mlflow.db"


def artifacts_destination(setup: ServerSetup) -> str:
    return setup.artifacts_destination or os.path.join(os.path.abspath(setup.store), "artifacts")


def describe(setup: ServerSetup) -> str:
    """One line for the console, with no secret in it."""
    from .redaction import redact

    return (f"MLflow tracking server at http://{setup.host}:{setup.port} (runs {redact(backend_store_uri(setup))}, "
            f"artifacts {artifacts_destination(setup)}{', logins on' if setup.auth else ''})")


def refuse_password_in(option: str, uri: Optional[str]) -> None:
    if uri and urlsplit(uri).password:
        raise ValueError(f"{option}: holds a password, which every user of this host would see in the process "
                         "list; give the URI without it and the password in PGPASSWORD or ~/.pgpass")


def auth_environment(setup: ServerSetup, store: str, backend: str) -> dict[str, str]:
    """MLflow's basic-auth app: its config file in the store (users and permissions in the auth
    database), the admin's first password and the session key, as environment variables."""
    if setup.default_permission not in PERMISSIONS:
        raise ValueError(f"--default-permission: one of {', '.join(PERMISSIONS)}; got {setup.default_permission}")
    refuse_password_in("--auth-database-uri", setup.auth_database_uri)
    config = configparser.ConfigParser()
    config["mlflow"] = {"default_permission": setup.default_permission,
                        "database_uri": setup.auth_database_uri or backend, "admin_username": ADMIN_USERNAME,
                        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
                        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S)}
    path = os.path.join(store, AUTH_CONFIG_FILE)
    with open(path, "w") as f:
        config.write(f)
    environment = {"MLFLOW_AUTH_CONFIG_PATH": path, "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key(store)}
    if setup.admin_password_file:
        with open(setup.admin_password_file) as f:
            environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = f.read().strip()
    return environment


def secret_key(store: str) -> str:
    """The key that signs the UI's sessions and CSRF tokens: $MLFLOW_FLASK_SERVER_SECRET_KEY (the same
    on every replica of a server), else one generated once into the store, readable by its owner only."""
    if os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = os.path.join(store, SECRET_KEY_FILE)
    if not os.path.exists(path):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        return f.read().strip()
