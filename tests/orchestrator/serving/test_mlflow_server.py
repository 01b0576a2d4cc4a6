"""`maskx mlflow-server` binds 127.0.0.1 unless told otherwise (the session's `mlflow_server` fixture
runs it for real)."""
from maskx.orchestrator.cli import build_parser
from maskx.orchestrator.serving.tracking import server_command


def test_the_tracking_server_binds_localhost_by_default(tmp_path):
    args = build_parser().parse_args(["mlflow-server", "--store", str(tmp_path)])
    assert args.host == "127.0.0.1"
    command = server_command(args.store, args.host, args.port)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert f"sqlite:///{tmp_path}/mlflow.db" in command
    assert command[command.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
