"""A deliberately unreliable HTTP proxy in front of a real S3 API server (moto), for fault tests.

For a seeded share of requests it answers ``500 InternalError`` or ``503 SlowDown`` (S3's own
error XML, which S3 clients retry) or drops the connection without an answer. It is bounded so
that a client retrying a few times always gets through: no request key (method + path) is failed
more than ``max_failures_per_key`` times, unless ``fail_rate`` is 1.0 (every request fails — the
"S3 is down" case). Everything else is forwarded byte for byte.

    proxy = FlakyS3Proxy(upstream="http://127.0.0.1:5000", fail_rate=0.2, seed=0)
    proxy.start(); ... proxy.endpoint_url ...; proxy.stop()
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_ERRORS = (
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "SlowDown", "Please reduce your request rate."),
)


class FlakyS3Proxy:
    def __init__(self, upstream: str, fail_rate: float, seed: int = 0, max_failures_per_key: int = 2):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.fail_rate, self.max_failures_per_key = fail_rate, max_failures_per_key
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._failed_per_key: Counter = Counter()
        self.stats: Counter = Counter()  # requests, forwarded, error_500, error_503, dropped
        self.forwarded_gets: Counter = Counter()  # path (no query) → GETs that reached the server
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FlakyS3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FlakyS3Proxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _decide(self, key: str) -> str:
        """'forward', 'error_500', 'error_503' or 'drop' for one request (seeded, bounded)."""
        with self._lock:
            self.stats["requests"] += 1
            always = self.fail_rate >= 1.0
            if always or (self._failed_per_key[key] < self.max_failures_per_key
                          and self._random.random() < self.fail_rate):
                self._failed_per_key[key] += 1
                outcome = self._random.choice(["error_500", "error_503", "drop"])
            else:
                outcome = "forward"
            self.stats[outcome] += 1
            return outcome

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._read_body()
                outcome = proxy._decide(f"{self.command} {self.path}")
                if outcome == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if outcome.startswith("error_"):
                    status, code, message = next(e for e in _ERRORS if f"error_{e[0]}" == outcome)
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                               f"<Message>{message}</Message><RequestId>flaky</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if self.command == "GET":
                    with proxy._lock:
                        proxy.forwarded_gets[self.path.split("?", 1)[0]] += 1
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or body:
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() not in ("content-length", "server", "date"):
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
