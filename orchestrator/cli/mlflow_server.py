"""`maskx mlflow-server`: an MLflow tracking server for one person or a team (docs/cluster.md)."""
from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("mlflow-server", help="run an MLflow tracking server: sqlite and artifacts under --store for one "
                                                   "person; PostgreSQL, S3 and logins for a team (docs/cluster.md)")
    server.add_argument("--store", default="mlflow-server", help="folder for mlflow.db and artifacts when no others are "
                                                                 "given, and the login config (default mlflow-server)")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: not reachable from other machines)")
    server.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    server.add_argument("--backend-store-uri", metavar="URI",
                        help="runs and registry: postgresql://USER@HOST:PORT/DB, its password in PGPASSWORD or ~/.pgpass "
                             "(default $MLFLOW_BACKEND_STORE_URI, else sqlite in --store)")
    server.add_argument("--artifacts-destination", metavar="URL",
                        help="where artifacts go, e.g. s3://BUCKET/PREFIX with this host's AWS credentials; clients "
                             "upload through the server and need none (default a folder in --store)")
    server.add_argument("--auth", action="store_true",
                        help="logins and permissions (MLflow's basic-auth app); the admin's first password from "
                             "MLFLOW_AUTH_ADMIN_PASSWORD or --admin-password-file")
    server.add_argument("--admin-password-file", metavar="FILE", help="with --auth: a file holding the admin's first password")
    server.add_argument("--auth-database-uri", metavar="URI", help="with --auth: users and permissions (default the "
                                                                   "--backend-store-uri database)")
    server.add_argument("--default-permission", default="READ", help="with --auth: what a user may do with others' "
                                                                     "experiments and models (READ, EDIT, MANAGE, NO_PERMISSIONS)")
    server.add_argument("--allowed-hosts", metavar="NAME,...", default="",
                        help="names clients reach the server by, e.g. mlflow.mlflow.svc.cluster.local: MLflow answers "
                             "other Host headers than localhost and private IPs with 403")
    server.add_argument("--cors-allowed-origins", metavar="URL,...", default="",
                        help="origins of other web apps whose pages may call the API, e.g. https://dash.example.com")
    server.add_argument("--insecure-no-auth", action="store_true",
                        help="allow --host beyond loopback without --auth (anyone who reaches it can edit everything)")
    server.add_argument("--workers", type=int, default=1, help="server processes (default 1; more with PostgreSQL)")
    server.set_defaults(run=run_mlflow_server)


def split_names(listed: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in listed.split(",") if name.strip())


def server_setup(args):
    """`maskx mlflow-server`'s flags as the tracking server's ServerSetup."""
    from maskx.orchestrator.tracking.server import ServerSetup

    return ServerSetup(store=args.store, host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
                       artifacts_destination=args.artifacts_destination, auth=args.auth,
                       admin_password_file=args.admin_password_file, auth_database_uri=args.auth_database_uri,
                       default_permission=args.default_permission, workers=args.workers,
                       allowed_hosts=split_names(args.allowed_hosts),
                       cors_allowed_origins=split_names(args.cors_allowed_origins),
                       insecure_no_auth=args.insecure_no_auth)


def run_mlflow_server(args) -> int:
    import os

    from maskx.orchestrator.tracking.server import describe, server_command

    setup = server_setup(args)
    command, environment = server_command(setup)
    print(describe(setup), flush=True)
    os.execve(command[0], command, {**os.environ, **environment})
