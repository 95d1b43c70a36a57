"""A loopback server speaking the Anthropic Messages API, for the real SDK to talk to.

Tests queue replies (`push`) and read back what the server received (`requests`). The
SDK runs its whole request path (auth headers, retries, timeouts, response parsing)
against it over HTTP; point it here with `ANTHROPIC_BASE_URL` or `base_url`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from proposer.prompt import TOOL_NAME


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (a slow API)


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    at: float

    @property
    def user_text(self) -> str:
        """The text of the first user turn (the digest and the task)."""
        content = self.body["messages"][0]["content"]
        return content if isinstance(content, str) else json.dumps(content)


def usage(
    input_tokens: int = 1_000,
    output_tokens: int = 500,
    cache_creation: int = 0,
    cache_read: int = 0,
) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
    }


def message(
    content: list[dict[str, Any]], *, stop_reason: str, use: dict[str, int] | None = None
) -> Reply:
    """A 200 Messages response; `model` is filled in from the request."""
    return Reply(
        200,
        {
            "id": f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": use or usage(),
        },
    )


def tool_reply(tool_input: Any, *, use: dict[str, int] | None = None) -> Reply:
    """A submit_drafts call with exactly this input (well-formed or not)."""
    block = {
        "type": "tool_use",
        "id": f"toolu_{uuid.uuid4().hex[:20]}",
        "name": TOOL_NAME,
        "input": tool_input,
    }
    return message([block], stop_reason="tool_use", use=use)


def drafts_reply(drafts: list[dict[str, Any]], *, use: dict[str, int] | None = None) -> Reply:
    return tool_reply({"drafts": drafts}, use=use)


def text_reply(text: str, *, use: dict[str, int] | None = None) -> Reply:
    return message([{"type": "text", "text": text}], stop_reason="end_turn", use=use)


def error_reply(status: int, kind: str, text: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"type": "error", "error": {"type": kind, "message": text}}
    return Reply(status, body, headers or {})


def rate_limited(retry_after_s: float = 0.2) -> Reply:
    # The API sends whole seconds in retry-after; retry-after-ms (which the SDK prefers)
    # keeps the test fast.
    return error_reply(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        {"retry-after": "1", "retry-after-ms": str(int(retry_after_s * 1000))},
    )


def overloaded() -> Reply:
    return error_reply(529, "overloaded_error", "Overloaded")


def draft(
    title: str, search: str, replace: str, *, path: str = "train.py", hypothesis: str = ""
) -> dict[str, Any]:
    return {
        "title": title,
        "hypothesis": hypothesis or f"{title}: should lower the loss",
        "expected_effect": "-0.1",
        "edits": [{"path": path, "search": search, "replace": replace}],
    }


class FakeAnthropic:
    """POST /v1/messages answered from a queue; when it is empty, by `respond` (a model that
    reads the request, as scripts/bench/proposers.py's does), else by `default`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.default: Reply = error_reply(500, "api_error", "the test queued no reply")
        self.respond: Callable[[Received], Reply] | None = None
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a slow reply may still sleep at shutdown
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, received: Received) -> Reply:
        with self._lock:
            self.requests.append(received)
            if self._queue:
                return self._queue.popleft()
        return self.respond(received) if self.respond else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/messages":
                    self._send(error_reply(404, "not_found_error", f"no route {self.path}"))
                    return
                body = json.loads(raw)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = fake._next(Received(self.path, headers, body, time.monotonic()))
                time.sleep(reply.delay_s)
                if reply.status == 200 and "model" not in reply.body:
                    reply = Reply(200, {**reply.body, "model": body["model"]}, reply.headers)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
