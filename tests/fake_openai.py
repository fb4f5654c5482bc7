"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests.

``FakeOpenAI`` runs a ``ThreadingHTTPServer`` on a free port in a background thread. Each POST to
``/v1/chat/completions`` is recorded, then answered by the next entry of ``script`` (if any) or by
``respond(body)``. It counts the most requests ever in flight at once; with ``gate = n`` each
request is held until ``n`` have been in flight together (or ``gate_timeout_s`` passes), so a
client that keeps fewer than ``n`` requests open is seen as such.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """What the server sends: a JSON body (or raw text), a status, headers, after a delay."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    trickle_s: float = 0.0  # > 0: the body goes out a byte at a time, this long apart


@dataclass(frozen=True)
class Seen:
    """One request as the server received it (header names lower-cased)."""

    body: dict[str, Any]
    headers: dict[str, str]


def completion(content: str | None, logprobs: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": "length",
            }
        ],
    }


def logprobs_reply(dist: Mapping[str, float]) -> Reply:
    """A one-token reply whose top_logprobs are ``log(p)`` for each ``token: p``, in order."""
    top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in dist.items()]
    first = max(dist, key=lambda t: dist[t])
    content = [{"token": first, "logprob": math.log(dist[first]), "top_logprobs": top}]
    return Reply(body=completion(first, {"content": content}))


def text_reply(text: str, *, omit_logprobs: bool = False) -> Reply:
    """A reply with no logprobs: ``"logprobs": null``, or no such key at all."""
    body = completion(text, None)
    if omit_logprobs:
        del body["choices"][0]["logprobs"]
    return Reply(body=body)


def score_from_prompt(body: Mapping[str, Any]) -> Reply:
    """Default behaviour: the last integer in the prompt is the judge's certain score."""
    numbers = re.findall(r"\d+", body["messages"][-1]["content"])
    return logprobs_reply({numbers[-1] if numbers else "50": 1.0})


class FakeOpenAI:
    def __init__(self, respond: Callable[[dict[str, Any]], Reply] = score_from_prompt) -> None:
        self.respond = respond
        self.script: list[Reply] = []
        self.requests: list[Seen] = []
        self.gate = 0
        self.gate_timeout_s = 2.0
        self.max_in_flight = 0
        self._in_flight = 0
        self._cond = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", "0"))))
        with self._cond:
            self.requests.append(Seen(body, {k.lower(): v for k, v in h.headers.items()}))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.max_in_flight >= self.gate, self.gate_timeout_s)
            reply = self.script.pop(0) if self.script else None
        done = False
        try:
            if h.path != "/v1/chat/completions":
                reply = Reply(status=404, body={"error": {"message": f"no route {h.path}"}})
            elif reply is None:
                reply = self.respond(body)
            time.sleep(reply.delay_s + (0.02 if self.gate else 0.0))
            raw = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            data = raw.encode("utf-8")
            h.send_response(reply.status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.end_headers()
            if reply.trickle_s > 0:
                for i in range(len(data)):
                    h.wfile.write(data[i : i + 1])
                    h.wfile.flush()
                    time.sleep(reply.trickle_s)
            else:
                # answered: no longer in flight before the client can see the reply and send
                # its next request (else a one-at-a-time client would look like two at once)
                done = self._leave()
                h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a timeout test)
        finally:
            if not done:
                self._leave()

    def _leave(self) -> bool:
        with self._cond:
            self._in_flight -= 1
        return True
