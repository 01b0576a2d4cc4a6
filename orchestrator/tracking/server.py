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
import ipaddress
import os
import secrets
import shutil
import sys
import warnings
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

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
    # Names clients reach the server by, beyond MLflow's defaults (localhost, private IPs): MLflow
    # answers any other Host header with 403 (its DNS-rebinding guard), a cluster's service name too.
    allowed_hosts: tuple[str, ...] = ()
    cors_allowed_origins: tuple[str, ...] = ()  # browser origins of other web apps that may call the API
    insecure_no_auth: bool = False  # bind beyond loopback without logins: anyone who reaches it can edit


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
    refuse_open_without_logins(setup)
    if setup.allowed_hosts:
        command += ["--allowed-hosts", ",".join(allowed_hosts(setup.allowed_hosts))]
    if setup.cors_allowed_origins:
        command += ["--cors-allowed-origins", ",".join(setup.cors_allowed_origins)]
    environment: dict[str, str] = {}
    if setup.auth:
        command += ["--app-name", "basic-auth"]
        environment = auth_environment(setup, store, backend_store_uri(setup))
    return command, environment


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_open_without_logins(setup: ServerSetup) -> None:
    """A server other machines reach takes logins, unless its owner says loudly that it need not."""
    if not is_loopback(setup.host) and not setup.auth:
        if not setup.insecure_no_auth:
            raise ValueError(f"--host {setup.host}: other machines can reach it, and without --auth anyone who does "
                             "can read, edit and delete every run and model; add --auth (docs/cluster.md, section 5), "
                             "or --insecure-no-auth on a network only you use")
        warnings.warn(f"--insecure-no-auth: the MLflow server on {setup.host} takes no logins; anyone who reaches "
                      "it can read, edit and delete every run and model", stacklevel=2)
    if setup.auth and setup.default_permission in ("EDIT", "MANAGE"):
        warnings.warn(f"--default-permission {setup.default_permission}: every user may "
                      f"{'edit' if setup.default_permission == 'EDIT' else 'edit, delete and re-permission'} "
                      "every other user's experiments and models", stacklevel=2)


def allowed_hosts(names) -> list[str]:
    """MLflow's default Host patterns (localhost, private IPs) plus each name, with any port: given
    --allowed-hosts, MLflow drops its defaults, and `kubectl port-forward` still asks as localhost."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    extra = [pattern for name in names for pattern in ((name,) if ":" in name else (name, f"{name}:*"))]
    return list(dict.fromkeys(extra + get_default_allowed_hosts()))


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
    from ..redaction import redact

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
    database, password = without_password(setup.auth_database_uri or backend)
    config = configparser.ConfigParser()
    config["mlflow"] = {"default_permission": setup.default_permission,
                        "database_uri": database, "admin_username": ADMIN_USERNAME,
                        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
                        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S)}
    path = os.path.join(store, AUTH_CONFIG_FILE)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)  # one written before by another umask or maskx
        config.write(f)
    environment = {"MLFLOW_AUTH_CONFIG_PATH": path, "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key(store)}
    if password and not os.environ.get("PGPASSWORD"):
        # The password $MLFLOW_BACKEND_STORE_URI carried reaches the auth app as libpq's own
        # variable, in the server's environment, never in the file.
        environment["PGPASSWORD"] = password
    if setup.admin_password_file:
        with open(setup.admin_password_file) as f:
            environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = f.read().strip()
    return environment


def without_password(uri: str) -> tuple[str, Optional[str]]:
    """The URI without its password, and the password (None where it had none)."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri, None
    userinfo, address = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]  # as written, still quoted
    return parts._replace(netloc=f"{user}@{address}" if user else address).geturl(), unquote(parts.password)


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
