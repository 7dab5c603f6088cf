"""A small fault-injecting HTTP proxy in front of the Stripe sandbox: real sockets, real requests.

Requests pass through unchanged, except the ones a rule matches (method and path), for which it can:
  drop_response      forward (Stripe charges), then close the client's connection without an answer
  kill_after_charge  forward (Stripe charges), then SIGKILL the client process before answering:
                     the process dies between the charge and its posting, deterministically
  kill_before_send   SIGKILL the client process without forwarding: the charge never reaches Stripe
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass
class Rule:
    method: str
    path: str
    action: str
    times: int = 1
    pid: int | None = None


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.hits: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                rule = proxy._take(self.command, path)
                if rule and rule.action == "kill_before_send":
                    proxy._record(self.command, path, "killed before sending")
                    os.kill(rule.pid or 0, signal.SIGKILL)
                    self._abort()
                    return
                upstream = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    content=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")},
                    timeout=30,
                )
                if rule and rule.action == "drop_response":
                    proxy._record(self.command, path, f"dropped a {upstream.status_code} answer")
                    self._abort()
                    return
                if rule and rule.action == "kill_after_charge":
                    proxy._record(self.command, path, f"killed the client after a {upstream.status_code} answer")
                    os.kill(rule.pid or 0, signal.SIGKILL)
                    self._abort()
                    return
                proxy._record(self.command, path, str(upstream.status_code))
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            def _abort(self) -> None:
                # a reset, as when a network path or a process dies: the client gets no answer at all
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, method: str, path: str, action: str, *, times: int = 1, pid: int | None = None) -> None:
        with self._lock:
            self.rules.append(Rule(method, path, action, times, pid))

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.method == method and rule.path == path and rule.times > 0:
                    rule.times -= 1
                    return rule
        return None

    def _record(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.hits.append((method, path, what))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
