"""Champion promotion fails closed, against the session's real tracking server: only "no such alias"
reads as no champion, and the alias moves only if it still points where the comparison found it."""
import http.server
import threading

import pytest

from maskx.orchestrator.tracking.store import Tracking
from maskx.orchestrator.tuning.promotion import move_alias_if_unchanged

pytestmark = [pytest.mark.integration, pytest.mark.tracking, pytest.mark.core]


def registry_with_versions(tracking, name, count):
    tracking.client.create_registered_model(name)
    return [tracking.client.create_model_version(name, source=f"s3://team/artifacts/promotion/{i}").version for i in range(count)]


def test_only_an_absent_alias_reads_as_no_champion(team_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_server.user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_server.user[1])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracking = Tracking(team_server.uri)
    registry_with_versions(tracking, "promotion-absent", 1)
    assert tracking.alias_version("promotion-absent", "champion") is None
    # (A model that does not exist is 403 through MLflow's logins, not "absent": promote() registers first.)

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")  # the server answers 401
    with pytest.raises(Exception):
        Tracking(team_server.uri).alias_version("promotion-absent", "champion")

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(Exception, match="503"):
            Tracking(f"http://127.0.0.1:{server.server_port}").alias_version("promotion-absent", "champion")
    finally:
        server.shutdown()


def test_the_alias_moves_only_if_no_other_sweep_moved_it_meanwhile(team_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_server.user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_server.user[1])
    tracking = Tracking(team_server.uri)
    first, second, third = registry_with_versions(tracking, "promotion-race", 3)
    assert move_alias_if_unchanged(tracking, "promotion-race", "champion", None, first)
    assert tracking.alias_version("promotion-race", "champion") == first
    tracking.set_alias("promotion-race", "champion", second)  # another sweep, finishing first
    assert not move_alias_if_unchanged(tracking, "promotion-race", "champion", first, third)
    assert tracking.alias_version("promotion-race", "champion") == second
    assert move_alias_if_unchanged(tracking, "promotion-race", "champion", second, third)
    assert tracking.alias_version("promotion-race", "champion") == third
