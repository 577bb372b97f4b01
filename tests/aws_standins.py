"""Bedrock Runtime stand-ins with scripted faults, for the fault-injection tests.

Two forms, same answers (a deterministic unit-ish vector per image, so reruns are comparable):

- :class:`ScriptedBedrock`: a botocore ``before-send`` hook. The real client serialises, signs,
  parses errors and retries (standard mode); only the socket is replaced. A ``fault`` callback
  decides per call: ``None`` (answer), ``(status, error_code)`` (an AWS error answer) or
  ``"timeout"`` (raises botocore's ``ReadTimeoutError``, as urllib3 would).
- ``python tests/aws_standins.py --latency 0.1``: the same answers over real HTTP in a separate
  process (prints its URL on the first line), reached through ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``
  by a CLI subprocess.

What they do not reproduce: Bedrock's real error texts, rates and quotas, token accounting, and
the quality of the vectors.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

Fault = tuple[int, str] | str | None


def vector_for(image_b64: str, dim: int) -> list[float]:
    """Deterministic per image content: the same image always gets the same vector."""
    seed = int.from_bytes(hashlib.sha256(image_b64.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim).round(6).tolist()


def _length(body: dict) -> int:
    return int(body.get("embeddingConfig", {}).get("outputEmbeddingLength", 1024))


class _Raw(io.BytesIO):
    def stream(self, amt: int = 1024, decode_content: bool = True):  # urllib3-like
        while chunk := self.read(amt):
            yield chunk


def _aws_response(status: int, payload: dict, code: str = "") -> AWSResponse:
    data = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "content-length": str(len(data))}
    if code:
        headers["x-amzn-ErrorType"] = f"{code}:http://internal.amazon.com/"
    return AWSResponse("https://bedrock-runtime.us-east-1.amazonaws.com", status, headers,
                       _Raw(data))


class ScriptedBedrock:
    """``client.meta.events.register("before-send.bedrock-runtime.InvokeModel", stand_in)``.

    ``fault(call_number, attempt_of_this_image)`` is asked before every answer (call numbers
    start at 1, across all images; attempts start at 1 per image)."""

    def __init__(self, fault: Callable[[int, int], Fault] | None = None) -> None:
        self.fault = fault or (lambda call, attempt: None)
        self.lock = threading.Lock()
        self.calls = 0
        self.attempts: dict[str, int] = {}
        self.answered: dict[str, int] = {}  # image -> successful answers
        self.faults: dict[str, int] = {}  # fault kind -> count injected

    def __call__(self, request, **kwargs) -> AWSResponse:
        body = json.loads(request.body)
        key = body["inputImage"]
        with self.lock:
            self.calls += 1
            call = self.calls
            self.attempts[key] = self.attempts.get(key, 0) + 1
            attempt = self.attempts[key]
        fault = self.fault(call, attempt)
        if fault is not None:
            kind = fault if isinstance(fault, str) else fault[1]
            with self.lock:
                self.faults[kind] = self.faults.get(kind, 0) + 1
            if fault == "timeout":
                raise ReadTimeoutError(endpoint_url=request.url)
            status, code = fault  # type: ignore[misc]
            return _aws_response(status, {"message": f"injected {code}"}, code)
        with self.lock:
            self.answered[key] = self.answered.get(key, 0) + 1
        return _aws_response(200, {"embedding": vector_for(key, _length(body)),
                                   "inputTextTokenCount": 0})

    @property
    def injected(self) -> int:
        return sum(self.faults.values())


def serve(latency: float, port: int = 0) -> ThreadingHTTPServer:
    """InvokeModel over HTTP with a fixed latency (no faults: the process is the fault)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            time.sleep(latency)
            body = json.loads(raw)
            data = json.dumps({"embedding": vector_for(body["inputImage"], _length(body)),
                               "inputTextTokenCount": 0}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Bedrock Runtime InvokeModel stand-in")
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    server = serve(args.latency)
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()

