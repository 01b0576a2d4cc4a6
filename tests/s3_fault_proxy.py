"""An HTTP proxy on 127.0.0.1 in front of the moto S3 server that injects the faults real S3 gives:
throttling and 5xx answers, and connections reset in the middle of a response body."""
from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERROR_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    """Applies to the next `times` requests whose method and path match: answer `status` with an S3
    error body, or pass the real answer but reset the connection after `reset_after` body bytes."""
    method: str
    path_suffix: str
    times: int = 1
    status: int | None = None
    reset_after: int | None = None


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    fault: str | None


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._take(self.command, self.path)
                proxy.seen.append(Seen(self.command, self.path, self.headers.get("Range"),
                                       None if fault is None else (f"status {fault.status}" if fault.status else f"reset after {fault.reset_after}")))
                if fault is not None and fault.status:
                    xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{ERROR_CODES[fault.status]}</Code>"
                           f"<Message>injected</Message></Error>").encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml if self.command != "HEAD" else b"")
                    return
                target = urlsplit(proxy.upstream)
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = target.netloc
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                # A HEAD's answer has no body but the object's length (what a size check reads).
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if fault is not None and fault.reset_after is not None:
                    self.wfile.write(payload[: fault.reset_after])
                    self.wfile.flush()
                    # An RST, not a clean close: what a dropped connection looks like to the client.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and path.split("?")[0].endswith(fault.path_suffix):
                fault.times -= 1
                return fault
        return None

    def requests_for(self, path_suffix: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.split("?")[0].endswith(path_suffix)]
