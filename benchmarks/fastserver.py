#!/usr/bin/env python3
"""A minimal, fast loopback server that speaks just enough of the Ollama API for benchmarks.

``POST /api/chat`` answers with one pre-built HTTP/1.1 chunked body of N ``/api/chat``
NDJSON chunks (one NDJSON line per HTTP chunk, as Ollama flushes them) and a final
``done: true`` chunk with usage figures, written with a few large ``sendall`` calls, so
the server costs almost no CPU and the client is the bottleneck. ``GET /api/version``,
``/api/tags``, ``/api/ps`` and ``/`` answer like Ollama so aicortex can refresh and route.

Binds 127.0.0.1 only. Run as its own process (so its CPU is not the consumer's)::

    python benchmarks/fastserver.py --chunks 200000     # prints "READY http://127.0.0.1:PORT"

It stops when its standard input closes (its parent died or closed the pipe) or on
SIGTERM/SIGINT. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading

HOST = "127.0.0.1"
MODEL = "bench:latest"
CREATED_AT = "2025-11-21T23:59:00.123456789Z"
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".", " And", " then")


def chat_lines(n: int) -> list[bytes]:
    """The NDJSON lines of a reply of ``n`` content chunks plus the final ``done`` chunk."""
    lines = []
    for i in range(n):
        obj = {
            "model": MODEL,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": WORDS[i % len(WORDS)]},
            "done": False,
        }
        lines.append(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    final = {
        "model": MODEL,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000_000_000 + n * 1000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 5_000_000,
        "eval_count": n,
        "eval_duration": max(1, n) * 1000,
    }
    lines.append(json.dumps(final, separators=(",", ":")).encode() + b"\n")
    return lines


def chunked_response(lines: list[bytes]) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/x-ndjson\r\n"
        b"Date: Fri, 21 Nov 2025 23:59:00 GMT\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    parts = [head]
    for line in lines:
        parts.append(b"%x\r\n%s\r\n" % (len(line), line))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def json_response(obj: object, status: str = "200 OK") -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s"
        % (status.encode(), len(body), body)
    )


def static_responses() -> dict[tuple[str, str], bytes]:
    model = {
        "name": MODEL,
        "model": MODEL,
        "modified_at": "2025-11-21T23:59:00Z",
        "size": 1000,
        "digest": "0" * 64,
        "details": {"format": "gguf", "family": "bench", "parameter_size": "1M", "quantization_level": "Q4_0"},
    }
    text = b"Ollama is running"
    return {
        ("GET", "/api/version"): json_response({"version": "0.12.6"}),
        ("GET", "/api/tags"): json_response({"models": [model]}),
        ("GET", "/api/ps"): json_response({"models": [{**model, "expires_at": "2099-01-01T00:00:00Z", "size_vram": 0}]}),
        ("GET", "/"): b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text),
        ("HEAD", "/"): b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n" % len(text),
    }


NOT_FOUND = json_response({"error": "not found"}, "404 Not Found")


class FastServer:
    """Serves on 127.0.0.1; one thread per connection, keep-alive."""

    def __init__(self, chunks: int, port: int = 0) -> None:
        self.chat_body = chunked_response(chat_lines(chunks))
        self.static = static_responses()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._conn, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def _conn(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, _ = lines[0].decode("latin-1").split(" ", 2)
                length = 0
                close = False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                while len(buf) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                path = target.split("?", 1)[0]
                if method == "POST" and path == "/api/chat":
                    sock.sendall(self.chat_body)
                else:
                    sock.sendall(self.static.get((method, path), NOT_FOUND))
                if close:
                    return
        except (OSError, ValueError):
            return
        finally:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=200_000, help="content chunks per /api/chat reply")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    server = FastServer(args.chunks, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"READY {server.url}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes the pipe (or dies)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
