"""The HTTP/1.1 side of FakeOllama: connection threads, request parsing, scripted replies.

Internal module; the public API is :class:`aicortex.testing.FakeOllama`.
"""

from __future__ import annotations

import email.utils
import http
import json
import select
import socket
import struct
import time
import traceback
import zlib
from typing import TYPE_CHECKING, Any, Iterable

from . import _admin
from ._script import RUNNER_STOPPED_ERROR, RequestRecord, Script, default_error
from ._wire import (
    find_model,
    go_json,
    go_json_error,
    is_zero_keep_alive,
    model_entry,
    ps_entry,
    rfc3339,
    shape_tool_calls,
    show_response,
)

if TYPE_CHECKING:
    from ._fake import FakeOllama

__all__ = ["Connection", "MutableRecord", "Request", "POLL", "ready"]

POLL = 0.05  # seconds between checks for stop() / client disconnect while waiting
_MAX_HEAD = 65536
_JSON = "application/json; charset=utf-8"
_ROUTES = {
    "/": ("GET", "HEAD"),
    "/api/version": ("GET", "HEAD"),
    "/api/tags": ("GET", "HEAD"),
    "/api/ps": ("GET",),
    "/api/show": ("POST",),
    "/api/chat": ("POST",),
    "/api/generate": ("POST",),
    "/api/embed": ("POST",),
    "/api/embeddings": ("POST",),
    "/api/pull": ("POST",),
    "/api/delete": ("DELETE",),
    "/api/copy": ("POST",),
    "/api/create": ("POST",),
    "/api/push": ("POST",),
}
_GO_TYPES = {
    "/api/chat": "ChatRequest",
    "/api/generate": "GenerateRequest",
    "/api/embed": "EmbedRequest",
    "/api/embeddings": "EmbeddingRequest",
    "/api/pull": "PullRequest",
    "/api/delete": "DeleteRequest",
    "/api/copy": "CopyRequest",
    "/api/create": "CreateRequest",
    "/api/push": "PushRequest",
}


class _Abort(Exception):
    """The fake is stopping or was killed."""


class _ClientGone(Exception):
    """The client closed or reset the connection."""


class _BadRequest(Exception):
    """The bytes received are not an HTTP/1.x request."""


def ready(sock: socket.socket, write: bool, timeout: float, wake: socket.socket | None = None) -> bool:
    """Wait up to ``timeout`` seconds until ``sock`` is readable (or writable) or ``wake`` is readable."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        if wake is not None:
            poller.register(wake, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    extra = [wake] if wake is not None else []
    r, w, _ = select.select(extra + ([] if write else [sock]), [sock] if write else [], [], timeout)
    return bool(r or w)


def _head(status: int, headers: Iterable[tuple[str, str]], close: bool, version: str = "HTTP/1.1") -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = f"status code {status}"
    lines = [f"{version} {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class MutableRecord:
    """The live record behind RequestRecord snapshots; ``fields`` change only under FakeOllama._cond."""

    def __init__(self, t0: int, **fields: Any) -> None:
        self.t0 = t0  # perf_counter_ns() when the request was fully read
        self.fields: dict[str, Any] = dict(status=None, tokens_sent=0, disconnected=False, completed=False, script=None)
        self.fields.update(fields)

    def snapshot(self) -> RequestRecord:
        return RequestRecord(**{**self.fields, "headers": dict(self.fields["headers"])})


class Request:
    def __init__(self, method: str, target: str, version: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.version, self.headers, self.body = method, version, headers, body
        self.path, _, self.query = target.partition("?")
        conn = headers.get("connection", "").lower()
        self.keep_alive = version == "HTTP/1.1" and "close" not in conn


class _Stream:
    """An NDJSON streamed reply; the status line and headers go out with the first piece.

    Chunked by default; ``http10``: HTTP/1.0 with the body ended by closing the
    connection; ``gzip``: every piece compressed and sync-flushed on its own.
    """

    def __init__(self, conn: Connection, req: Request, rec: MutableRecord, script: Script | None = None) -> None:
        self.conn, self.req, self.rec, self.started = conn, req, rec, False
        self.http10 = bool(script and script.http10)
        self.gz = zlib.compressobj(6, zlib.DEFLATED, 31) if script and script.gzip else None

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this reply."""
        return self.req.keep_alive and not self.http10

    def _frame(self, payload: bytes) -> bytes:
        if self.gz is not None:
            payload = self.gz.compress(payload) + self.gz.flush(zlib.Z_SYNC_FLUSH)
        if self.http10 or not payload:
            return payload
        return b"%x\r\n%s\r\n" % (len(payload), payload)

    def _send(self, data: bytes, before: dict[str, Any] | None = None, undo: dict[str, Any] | None = None) -> None:
        before = dict(before or {})
        if not self.started:
            headers = [("Content-Type", "application/x-ndjson")]
            if self.gz is not None:
                headers.append(("Content-Encoding", "gzip"))
            if not self.http10:
                headers.append(("Transfer-Encoding", "chunked"))
            head = _head(200, headers, not self.keep_alive, "HTTP/1.0" if self.http10 else "HTTP/1.1")
            data = head + data
            before["status"] = 200
            self.started = True
        self.conn.send_recorded(self.rec, data, before, undo)

    def raw_line(self, line: bytes, before: dict[str, Any] | None = None, undo: dict[str, Any] | None = None) -> None:
        """Send ``line`` as body bytes (framed, compressed as the reply is); b"" sends just the head."""
        self._send(self._frame(line), before, undo)

    def line(self, obj: Any, before: dict[str, Any] | None = None, undo: dict[str, Any] | None = None) -> None:
        self.raw_line(go_json(obj) + b"\n", before, undo)

    def end(self) -> None:
        """End the body: the gzip trailer, then the 0-chunk (HTTP/1.0: the caller closes)."""
        tail = self.gz.flush() if self.gz is not None else b""
        if not self.http10:
            tail = (b"%x\r\n%s\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n\r\n"
        self._send(tail, {"completed": True}, {"completed": False})


class Connection:
    """One accepted TCP connection, served by its own thread (HTTP/1.1 keep-alive)."""

    def __init__(self, fake: FakeOllama, sock: socket.socket) -> None:
        self.fake, self.sock, self.buf, self.reset_on_close = fake, sock, bytearray(), False

    # -- socket primitives; all poll so that stop()/kill() and client EOF end them early --

    def _check_stop(self) -> None:
        if self.fake._stopping.is_set():
            raise _Abort

    def _recv(self) -> bool:
        """Read what is available into self.buf; False on EOF."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            raise _ClientGone from None
        self.buf += data
        return bool(data)

    def fill(self) -> bool:
        """Block (polling) until more bytes arrive; False on EOF."""
        while True:
            self._check_stop()
            if ready(self.sock, False, POLL, self.fake._wake_r):
                n = len(self.buf)
                if not self._recv():
                    return False
                if len(self.buf) > n:
                    return True

    def wait(self, seconds: float) -> None:
        """Send nothing for ``seconds``; raise _ClientGone on client EOF, _Abort on stop."""
        deadline = time.monotonic() + seconds
        while True:
            self._check_stop()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if ready(self.sock, False, min(remaining, POLL), self.fake._wake_r) and not self._recv():
                raise _ClientGone

    def hold(self) -> None:
        """Never answer: wait until the client goes away or the fake stops."""
        while True:
            self.wait(3600.0)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check_stop()
            if not ready(self.sock, True, POLL, self.fake._wake_r):
                continue
            try:
                view = view[self.sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                raise _ClientGone from None

    def send_recorded(self, rec: MutableRecord, data: bytes, before: dict[str, Any], undo: dict[str, Any] | None = None) -> None:
        """Update ``rec`` with ``before``, then send (so a client never sees bytes the record
        does not account for yet); if the client is gone, apply ``undo`` and re-raise."""
        if before:
            self.fake._update(rec, **before)
        try:
            self.send(data)
        except _ClientGone:
            if undo:
                self.fake._update(rec, **undo)
            raise

    def close(self) -> None:
        if self.fake._killing or self.reset_on_close:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.sock.close()

    # -- HTTP request parsing --

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise _ClientGone
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > _MAX_HEAD:
                raise _BadRequest
            if not self.fill():
                raise _ClientGone
        return self._read_exact(i + 2)[:-2]

    def read_request(self) -> Request | None:
        while True:
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > _MAX_HEAD:
                raise _BadRequest
            if not self.fill():
                if self.buf:
                    raise _ClientGone
                return None
        lines = self._read_exact(end + 4)[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                try:
                    size = int(self._read_line().split(b";")[0].strip(), 16)
                except ValueError:
                    raise _BadRequest from None
                if size == 0:
                    while self._read_line():
                        pass
                    break
                body += self._read_exact(size)
                self._read_line()
            data = bytes(body)
        else:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                raise _BadRequest from None
            data = self._read_exact(length)
        return Request(parts[0], parts[1], parts[2], headers, data)

    def run(self) -> None:
        try:
            while True:
                req = self.read_request()
                if req is None or not self.handle(req):
                    break
        except (_Abort, _ClientGone):
            pass
        except _BadRequest:
            try:
                self.send(_head(400, [("Content-Type", "text/plain; charset=utf-8")], True) + b"400 Bad Request")
            except (_Abort, _ClientGone):
                pass
        except Exception:  # never let a bug in the fake raise in a thread; keep it for inspection
            self.fake.server_errors.append(traceback.format_exc())
        finally:
            self.close()

    # -- replies --

    def reply(
        self, req: Request, rec: MutableRecord, status: int, ctype: str | None, body: bytes, close: bool = False
    ) -> bool:
        """Send a whole response with Content-Length (and no Content-Type if ``ctype`` is None,
        like a Go handler that writes nothing); return True to keep the connection."""
        keep = req.keep_alive and not close
        headers = [("Content-Type", ctype)] if ctype is not None else []
        head = _head(status, [*headers, ("Content-Length", str(len(body)))], not keep)
        data = head + (b"" if req.method == "HEAD" else body)
        self.send_recorded(rec, data, {"status": status, "completed": True}, {"completed": False})
        return keep

    def reply_json(self, req: Request, rec: MutableRecord, status: int, obj: Any, ctype: str = _JSON) -> bool:
        return self.reply(req, rec, status, ctype, go_json(obj))

    def stream(self, req: Request, rec: MutableRecord) -> _Stream:
        """A plain chunked NDJSON reply (status line and headers go out with the first line)."""
        return _Stream(self, req, rec)

    def handle(self, req: Request) -> bool:
        rec = self.fake._new_record(req)
        try:
            if self.fake.blackhole_all:
                self.hold()
            return self.route(req, rec)
        except _ClientGone:
            self.fake._mark_gone(rec)
            raise

    def route(self, req: Request, rec: MutableRecord) -> bool:
        fake, path = self.fake, req.path
        if path not in _ROUTES:
            return self.reply(req, rec, 404, "text/plain", b"404 page not found")
        if req.method not in _ROUTES[path]:
            return self.reply(req, rec, 405, "text/plain", b"405 method not allowed")
        if path == "/":
            return self.reply(req, rec, 200, "text/plain; charset=utf-8", b"Ollama is running")
        if path == "/api/version":
            return self.reply_json(req, rec, 200, {"version": fake.version})
        if path == "/api/tags":
            return self.reply_json(req, rec, 200, {"models": [model_entry(n, fake._modified_at) for n in fake.models]})
        if path == "/api/ps":
            expires = rfc3339(time.time_ns() + 300 * 10**9)
            return self.reply_json(req, rec, 200, {"models": [ps_entry(n, expires) for n in fake._loaded_names()]})
        body, error = self._parse_body(req, path)
        if error is not None:
            return self.reply_json(req, rec, error[0], {"error": error[1]})
        if path == "/api/show":
            name = body.get("model") or body.get("name") or ""
            if not name:
                return self.reply_json(req, rec, 400, {"error": "model is required"})
            listed = find_model(name, fake.models)
            if listed is None:
                return self.reply_json(req, rec, 404, {"error": f"model '{name}' not found"})
            return self.reply_json(req, rec, 200, show_response(listed, fake._modified_at, fake.template))
        if path in ("/api/embed", "/api/embeddings"):
            return _admin.embed(self, req, rec, body, legacy=path == "/api/embeddings")
        if path == "/api/pull":
            return _admin.pull(self, req, rec, body)
        if path == "/api/delete":
            return _admin.delete(self, req, rec, body)
        if path == "/api/copy":
            return _admin.copy(self, req, rec, body)
        if path in ("/api/create", "/api/push"):
            return _admin.create_or_push(self, req, rec, body, push=path == "/api/push")
        return self.generate(req, rec, "chat" if path == "/api/chat" else "generate", body)

    def _parse_body(self, req: Request, path: str) -> tuple[dict[str, Any], tuple[int, str] | None]:
        if not req.body.strip():
            if path == "/api/chat":
                return {}, (400, "model is required")
            if path == "/api/generate":
                return {}, (404, "model '' not found")
            return {}, (400, "missing request body")
        try:
            body = json.loads(req.body)
        except json.JSONDecodeError as exc:
            return {}, (400, go_json_error(exc))
        except ValueError:
            return {}, (400, "invalid character in request body")
        if not isinstance(body, dict):
            kind = {list: "array", str: "string", bool: "bool"}.get(type(body), "number")
            go_type = _GO_TYPES.get(path, "ShowRequest")
            return {}, (400, f"json: cannot unmarshal {kind} into Go value of type api.{go_type}")
        if not isinstance(body.get("model", ""), (str, type(None))):
            return {}, (400, "json: cannot unmarshal into Go struct field of type string (model)")
        return body, None

    def generate(self, req: Request, rec: MutableRecord, kind: str, body: dict[str, Any]) -> bool:
        fake, chat = self.fake, kind == "chat"
        model = body.get("model") or ""
        if not model:
            if chat:
                return self.reply_json(req, rec, 400, {"error": "model is required"})
            return self.reply_json(req, rec, 404, {"error": "model '' not found"})
        if find_model(model, fake.models) is None:
            return self.reply_json(req, rec, 404, {"error": f"model '{model}' not found"})
        if chat:
            messages = body.get("messages")
            if messages is not None and not isinstance(messages, list):
                error = "json: cannot unmarshal value into Go struct field ChatRequest.messages of type []api.Message"
                return self.reply_json(req, rec, 400, {"error": error})
            empty = not messages
        else:
            if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
                error = "raw mode does not support template, system, or context"
                return self.reply_json(req, rec, 400, {"error": error})
            empty = not body.get("prompt")
        if empty:  # load / unload reply: one JSON object even when streaming was asked for
            reason = "unload" if is_zero_keep_alive(body.get("keep_alive")) else "load"
            fake._note_load(model, unload=reason == "unload")
            obj: dict[str, Any] = {"model": model, "created_at": rfc3339()}
            obj.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            obj.update(done=True, done_reason=reason)
            return self.reply_json(req, rec, 200, obj)
        script = fake._take_script()
        fake._update(rec, script=script)
        return _Generation(self, req, rec, kind, body, model, script).run()


def _remainder(pieces: list[str], prefix: str) -> list[str] | None:
    """The pieces after ``prefix`` (splitting the piece it ends in), or None if it is not a prefix."""
    if not "".join(pieces).startswith(prefix):
        return None
    out, pos = [], 0
    for piece in pieces:
        end = pos + len(piece)
        if pos >= len(prefix):
            out.append(piece)
        elif end > len(prefix):
            out.append(piece[len(prefix) - pos :])
        pos = end
    return out


class _Generation:
    """Plays one Script for one /api/chat or /api/generate request."""

    def __init__(
        self, conn: Connection, req: Request, rec: MutableRecord, kind: str, body: dict[str, Any], model: str, script: Script
    ) -> None:
        self.conn, self.req, self.rec, self.kind = conn, req, rec, kind
        self.body, self.model, self.script = body, model, script
        self.chat = kind == "chat"
        self.stream_mode = body.get("stream", True) is not False
        self.out = _Stream(conn, req, rec, script)
        self.emitted = False
        self.acc_content: list[str] = []
        self.acc_thinking: list[str] = []
        self.acc_tools: list[dict[str, Any]] = []
        self.eval_count = 0
        self.t_first: int | None = None

    def plan(self) -> tuple[list[str], list[str]]:
        s = self.script
        thinking, content = list(s.thinking), list(s.tokens)
        messages = self.body.get("messages") or []
        last = messages[-1] if self.chat and messages else None
        if s.continue_prefill and isinstance(last, dict) and str(last.get("role", "")).lower() == "assistant":
            prefix, th_prefix = str(last.get("content") or ""), str(last.get("thinking") or "")
            if prefix:
                rest = _remainder(content, prefix)
                if rest is not None:
                    content, thinking = rest, []
            elif th_prefix:
                rest = _remainder(thinking, th_prefix)
                if rest is not None:
                    thinking = rest
        elif s.continue_prefill and not self.chat and self.body.get("raw") is True:
            # a raw prompt that ends with the start of the reply continues it (prefill)
            prompt, text = str(self.body.get("prompt") or ""), "".join(content)
            for k in range(min(len(prompt), len(text)), 0, -1):
                if prompt.endswith(text[:k]):
                    content, thinking = _remainder(content, text[:k]) or [], []
                    break
        return thinking, content

    def chunk(
        self,
        content: str,
        thinking: str = "",
        tool_calls: list[Any] | None = None,
        done: bool = False,
        tail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One reply object in Ollama's field order (chat: message{...}; generate: response)."""
        d: dict[str, Any] = {"model": self.model, "created_at": rfc3339()}
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if tool_calls:
                msg["tool_calls"] = tool_calls
            d["message"] = msg
            d["done"] = done
            d.update(tail or {})
        else:
            d["response"] = content
            if thinking:
                d["thinking"] = thinking
            d["done"] = done
            d.update(tail or {})
            if tool_calls:
                d["tool_calls"] = tool_calls
        return d

    def drip(self) -> None:
        """Script.drip: keep-alive whitespace every ``drip`` s for ``drip_for`` s (headers with the first)."""
        s = self.script
        if s.drip is None:
            return
        piece = b" " if s.drip_bytes else b"\n"
        end = time.monotonic() + s.drip_for
        while True:
            self.out.raw_line(piece)
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self.conn.wait(min(s.drip, remaining))

    def pace(self) -> None:
        if self.emitted and self.script.token_delay > 0:
            self.conn.wait(self.script.token_delay)

    def emit(
        self, content: str = "", thinking: str = "", tool_calls: list[Any] | None = None, count: int | None = None
    ) -> None:
        """Send (or, for stream:false, collect) one chunk; ``count`` = content tokens sent after it."""
        self.pace()
        before = {"tokens_sent": count} if count is not None else None
        undo = {"tokens_sent": count - 1} if count is not None else None
        if self.stream_mode:
            self.out.line(self.chunk(content, thinking, tool_calls), before, undo)
        elif before:
            self.conn.fake._update(self.rec, **before)
        self.acc_content.append(content)
        self.acc_thinking.append(thinking)
        self.acc_tools.extend(tool_calls or ())
        self.emitted = True
        if self.t_first is None:
            self.t_first = time.perf_counter_ns()

    def prompt_eval_count(self) -> int:
        if self.script.prompt_eval_count is not None:
            return self.script.prompt_eval_count
        if self.chat:
            msgs = [m for m in self.body.get("messages") or [] if isinstance(m, dict)]
            chars = sum(len(str(m.get("content") or "")) for m in msgs) + 16 * len(msgs)
        else:
            chars = len(str(self.body.get("prompt") or "")) + len(str(self.body.get("system") or "")) + 16
        return max(1, chars // 4)

    def final_tail(self) -> dict[str, Any]:
        now = time.perf_counter_ns()
        first = self.t_first if self.t_first is not None else now
        tail: dict[str, Any] = {}
        if self.script.done_reason:
            tail["done_reason"] = self.script.done_reason
        prompt_count = self.prompt_eval_count()
        if not self.chat and not self.body.get("raw"):
            tail["context"] = list(range(1, prompt_count + self.eval_count + 1))
        metrics = {
            "total_duration": now - self.t0,
            "load_duration": self.t_sched - self.t0,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": first - self.t_sched,
            "eval_count": self.eval_count,
            "eval_duration": now - first,
        }
        tail.update((k, int(v)) for k, v in metrics.items() if v)  # Go omitempty
        return tail

    def fault(self, name: str, text: str) -> bool:
        """Carry out a count-triggered fault; return True to keep the connection."""
        conn, req, rec, s = self.conn, self.req, self.rec, self.script
        if name == "error":
            if self.stream_mode:
                self.out.raw_line(go_json({"error": text}) + b"\n")
                self.out.end()
                return self.out.keep_alive
            return conn.reply_json(req, rec, 500, {"error": text})
        if name == "drop":
            conn.reset_on_close = s.reset
            return False
        if name == "malformed":
            garbage = b'{"model":"%s","created_at":"%s","message":{"role":"assist' % (
                self.model.encode(),
                rfc3339().encode(),
            )
            if self.stream_mode:
                self.out.raw_line(garbage + b"\n")
                self.out.end()
            else:
                conn.reply(req, rec, 200, _JSON, garbage, close=True)
            return False
        # end without done
        if self.stream_mode:
            self.out.end()
            return self.out.keep_alive
        partial = self.chunk("".join(self.acc_content), "".join(self.acc_thinking), self.acc_tools or None)
        return conn.reply_json(req, rec, 200, partial)

    def run(self) -> bool:
        conn, s = self.conn, self.script
        self.t0 = self.rec.t0
        self.t_sched = time.perf_counter_ns()
        if s.blackhole:
            conn.hold()
        if s.first_token_delay:
            conn.wait(s.first_token_delay)
        if s.status is not None:
            text = s.error if s.error is not None else default_error(s.status, self.model)
            ctype = "application/json" if self.stream_mode and s.status in (429, 500) else _JSON
            return conn.reply_json(self.req, self.rec, s.status, {"error": text}, ctype)
        if s.raw is not None:
            self.drip()
            self.out.raw_line(bytes(s.raw))
            self.out.end()
            return self.out.keep_alive
        if self.stream_mode:
            self.drip()
        thinking, content = self.plan()
        for piece in thinking:
            self.emit(thinking=piece)
            self.eval_count += 1
        n = len(content)
        triggers = [
            ("error", s.error_after),
            ("drop", s.drop_after),
            ("malformed", s.malformed_after),
            ("end_without_done", s.end_without_done_after),
        ]
        for i in range(n + 1):
            if s.stall_after is not None and min(s.stall_after, n) == i:
                conn.wait(s.stall)
            for name, after in triggers:
                if after is not None and min(after, n) == i:
                    self.pace()
                    return self.fault(name, s.error if s.error is not None else RUNNER_STOPPED_ERROR)
            if i == n:
                break
            self.emit(content=content[i], count=i + 1)
            self.eval_count += 1
        calls = shape_tool_calls(s.tool_calls)
        if calls and self.chat and not s.tool_calls_on_done:
            self.emit(tool_calls=calls)
            calls = []
        self.pace()
        tail = self.final_tail()
        if self.stream_mode:
            self.out.line(self.chunk(s.final_content, tool_calls=calls, done=True, tail=tail))
            if s.hold_after_done:
                conn.wait(s.hold_after_done)
            self.out.end()
            return self.out.keep_alive
        self.acc_tools.extend(calls)
        text = "".join(self.acc_content) + s.final_content
        whole = self.chunk(text, "".join(self.acc_thinking), self.acc_tools or None, done=True, tail=tail)
        return conn.reply_json(self.req, self.rec, 200, whole)
