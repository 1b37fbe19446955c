"""The ``aicortex`` command line: a click group over :class:`~aicortex.Client` and the registry.

Commands::

    aicortex servers add URL [--name NAME] [--priority N] [--header-env HEADER=VAR]... [--no-seed]
    aicortex servers list [--json]
    aicortex servers remove|enable|disable NAME_OR_URL
    aicortex refresh [SERVER...]
    aicortex models [MODEL] [--json]
    aicortex chat -m MODEL [PROMPT]
    aicortex bench -m MODEL [--runs K]
    aicortex ps [--server S]... [--json]
    aicortex show MODEL [--json]
    aicortex pull MODEL [--server S]... [--json]
    aicortex delete MODEL [--server S]... [--json]
    aicortex copy SOURCE DESTINATION [--server S]... [--json]
    aicortex warm MODEL [--server S]... [--keep-alive D] [--json]
    aicortex unload MODEL [--server S]... [--json]
    aicortex top [--interval S] [--once]
    aicortex registry copy SOURCE DESTINATION [--json]
    aicortex serve [--host 127.0.0.1] [--port 11435] [--keys-file PATH] [--insecure] [limits]

``--db PATH`` goes before the command (``aicortex --db PATH models``, env
``AICORTEX_DB``) or after it (``aicortex models --db PATH``, which wins); default:
``servers.db`` in the user data directory; a ``postgresql://user@host/db`` URL instead of
a path is a registry in PostgreSQL (``pip install 'aicortex[postgres]'``). Only ``servers add`` creates a registry (and
its folder); every other command on a missing file exits 1 saying so. Library errors
(:class:`~aicortex.AICortexError`) become ``click.ClickException``: the library's
message on stderr, exit status 1; usage errors exit 2; Ctrl-C during ``chat`` exits 130.

Only click is imported here at import time; httpx and sqlite-utils load when a command
builds its :class:`~aicortex.Client` or :class:`~aicortex.Registry`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import click

from ._exceptions import AICortexError, AllServersFailed, error_reason
from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ._client import Client
    from ._fleetops import OpResult, PullProgress
    from ._models import Server, StreamEvent
    from ._registry import Registry

__all__ = ["cli"]

F = TypeVar("F", bound=Callable[..., Any])

PREFIX = "[aicortex]"


# -- shared option bundles (sqlite-utils style) ---------------------------------------------------
def db_option(fn: F) -> F:
    """``--db PATH`` on a command: the registry file; wins over the group-level ``--db``
    (which also reads ``AICORTEX_DB``), so it has no environment variable of its own."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=str),
        metavar="PATH",
        default=None,
        help="Registry file or postgresql:// URL (also `aicortex --db PATH COMMAND`; env AICORTEX_DB; "
        "default: servers.db in the user data directory).",
    )(fn)


def _check_model(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A model name given but empty (``-m ""``, blanks) is a usage error; blanks are trimmed."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("the model name is empty: give one, e.g. -m llama3.2", ctx=ctx, param=param)
    return value.strip()


def model_option(fn: F) -> F:
    """``-m/--model MODEL`` (env ``AICORTEX_MODEL``), required and not empty."""
    return click.option(
        "-m",
        "--model",
        required=True,
        envvar="AICORTEX_MODEL",
        callback=_check_model,
        help="Model name (env AICORTEX_MODEL).",
    )(fn)


def _resolve_db(db: str | None) -> str | None:
    """The command's ``--db``, else the group's (``aicortex --db PATH ...`` or ``AICORTEX_DB``)."""
    if db is not None:
        return db
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    root: str | None = ctx.find_root().params.get("db")
    return root


def json_option(fn: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Output JSON instead of a table.")(fn)


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn every :class:`AICortexError` into a ``ClickException`` (exit status 1)."""
    try:
        yield
    except AllServersFailed as exc:
        raise click.ClickException(_all_failed_message(exc)) from exc
    except AICortexError as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def open_registry(db: str | None, *, create: bool = False, seed: bool = False) -> Iterator["Registry"]:
    """The registry at ``--db``; a missing file is an error unless ``create`` (only
    ``servers add``). ``seed`` applies to a registry this call creates."""
    from ._registry import Registry

    with library_errors():
        reg = Registry(_resolve_db(db), create=create, seed=seed)
    try:
        with library_errors():
            yield reg
    finally:
        reg.close()


@contextlib.contextmanager
def open_client(db: str | None, **kw: Any) -> Iterator["Client"]:
    """A :class:`Client` over the existing registry at ``--db`` (never creates one)."""
    from ._client import Client

    with open_registry(db) as reg:
        with library_errors():
            client = Client(reg, **kw)
        try:
            with library_errors():
                yield client
        finally:
            client.close()


# -- formatting helpers -------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns, two spaces apart, a dashed line under the headers."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def humanize_ago(ts: float | None, now: float | None = None) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``; ``never`` for ``None``."""
    if ts is None:
        return "never"
    delta = max(0.0, (time.time() if now is None else now) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


def truncate(text: str | None, width: int = 50) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _models_cell(models: Sequence[str], width: int = 30) -> str:
    if not models:
        return "0"
    names = ", ".join(models)
    return names if len(names) <= width else str(len(models))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _all_failed_message(exc: AllServersFailed, names: dict[str, str] | None = None) -> str:
    names = names or {}
    lines = [f"all {_plural(len(exc.attempts), 'server')} failed for model {exc.model!r}:"]
    for a in exc.attempts:
        where = f"{names[a.server]} ({a.server})" if a.server in names else a.server
        lines.append(f"  {where}: {error_reason(a.error)}")
    if not exc.attempts:
        lines[0] = str(exc)
    return "\n".join(lines)


def _server_json(server: "Server") -> dict[str, Any]:
    return dataclasses.asdict(server)


def _headers_cell(server: "Server") -> str:
    """``Authorization=$GPU1_TOKEN``: header names and the variables they come from, never values."""
    return ", ".join(f"{h}=${v}" for h, v in server.headers_env.items())


def _label(server: "Server") -> str:
    return f"{server.name} ({server.url})"


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# -- the group ----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="aicortex")
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False, path_type=str),
    envvar="AICORTEX_DB",
    metavar="PATH",
    default=None,
    help="Registry file or postgresql://user@host/db URL for every command (env AICORTEX_DB; "
    "a command's own --db wins; default: servers.db in the user data directory).",
)
def cli(db: str | None) -> None:
    """aicortex: talk to many Ollama servers as if they were one.

    Register servers, refresh what they serve, then chat: the reply streams from the
    best server that has the model and fails over to the next one, mid-reply included.

    \b
        aicortex servers add http://gpu1:11434
        aicortex refresh
        aicortex models
        aicortex chat -m llama3.2 "Why is the sky blue?"
    """


def _where(reg: "Registry") -> str:
    """A registry's location for messages: its file, or its URL without credentials."""
    return str(reg.path) if reg.path is not None else str(getattr(reg, "url", ":memory:"))


# -- registry -------------------------------------------------------------------------------------
@cli.group(name="registry")
def registry_group() -> None:
    """Move a registry between stores (SQLite files and PostgreSQL databases)."""


@registry_group.command(name="copy")
@click.argument("source")
@click.argument("destination")
@json_option
def registry_copy(source: str, destination: str, as_json: bool) -> None:
    """Copy every server of SOURCE, with its models, circuit breakers, EWMA metrics and
    bench figures, into DESTINATION (created if missing, never seeded).

    Each is a registry file or a postgresql://user@host[:port]/dbname URL (the password
    comes from PGPASSWORD or ~/.pgpass). SOURCE is only read; DESTINATION must not hold
    any of SOURCE's servers (nothing is copied then).

    \b
        aicortex registry copy ~/.local/share/aicortex/servers.db postgresql://app@db1/fleet
        aicortex registry copy postgresql://app@db1/fleet backup.db
    """
    from ._registry import copy_registry

    with open_registry(source) as src, open_registry(destination, create=True) as dst:
        counts = copy_registry(src, dst)
        where = (_where(src), _where(dst))
    if as_json:
        click.echo(json.dumps({"source": where[0], "destination": where[1], **counts}))
        return
    click.echo(
        f"Copied {counts['servers']} servers ({counts['models']} models, {counts['health']} health records, "
        f"{counts['bench']} bench rows) from {where[0]} to {where[1]}."
    )


# -- servers --------------------------------------------------------------------------------------
@cli.group()
def servers() -> None:
    """Manage the registry of Ollama servers."""


def _parse_header_env(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    from ._config import check_headers_env
    from ._exceptions import ConfigError

    refs: dict[str, str] = {}
    for item in values:
        header, sep, var = item.partition("=")
        header, var = header.strip(), var.strip()
        if not sep:
            raise click.BadParameter(
                f"{item!r} is not HEADER=ENV_VAR (e.g. Authorization=GPU1_TOKEN)", ctx=ctx, param=param
            )
        if header.lower() in (h.lower() for h in refs):
            raise click.BadParameter(f"header {header!r} is given twice; give it once", ctx=ctx, param=param)
        refs[header] = var
    try:
        return check_headers_env(refs)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


@servers.command(name="add")
@click.argument("url")
@click.option("--name", help="Short unique name (default: host:port).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher is tried first among equally healthy servers.")
@click.option(
    "--header-env",
    "headers_env",
    multiple=True,
    metavar="HEADER=ENV_VAR",
    callback=_parse_header_env,
    help="Send HEADER to this server with the value of environment variable ENV_VAR, read at "
    "request time; repeatable. Only the variable's name is stored, never its value.",
)
@click.option(
    "--no-seed",
    is_flag=True,
    help="When this creates the registry, do not also register OLLAMA_HOST (default http://127.0.0.1:11434).",
)
@db_option
def servers_add(
    url: str, name: str | None, priority: int, headers_env: dict[str, str], no_seed: bool, db: str | None
) -> None:
    """Register the Ollama server at URL (http(s)://host[:port], or host[:port]).

    The only command that creates a registry (and its folder) when there is none; a
    new registry also gets OLLAMA_HOST (default http://127.0.0.1:11434) as a server,
    unless --no-seed.

    \b
        aicortex servers add http://gpu1:11434 --name gpu1 --priority 10
        GPU1_TOKEN="Bearer ..." aicortex servers add https://gpu1 --header-env Authorization=GPU1_TOKEN
    """
    from ._config import normalize_url

    with library_errors():
        normalized = normalize_url(url)  # bad input creates no registry
    with open_registry(db, create=True, seed=not no_seed) as reg:
        seeded = reg.seeded
        if seeded == normalized:  # the seed is the server being added: add it as asked
            reg.remove(seeded)
            seeded = None
        server = reg.add(normalized, name=name, priority=priority, headers_env=headers_env)
        if seeded is not None:
            seed = reg.get(seeded)
            click.echo(
                f"{PREFIX} new registry {_where(reg)}: also added {_label(seed)} from OLLAMA_HOST "
                f"(default http://127.0.0.1:11434); `aicortex servers remove {seed.name}` to drop it "
                "(--no-seed to skip it when creating a registry)",
                err=True,
            )
    extra = f", headers {_headers_cell(server)}" if server.headers_env else ""
    click.echo(f"Added {_label(server)} with priority {server.priority}{extra}. Run `aicortex refresh` to probe it.")


@servers.command(name="list")
@json_option
@db_option
def servers_list(as_json: bool, db: str | None) -> None:
    """List the registered servers and what the last refresh found."""
    with open_registry(db) as reg:
        found = reg.servers()
    if as_json:
        _echo_json([_server_json(s) for s in found])
        return
    if not found:
        click.echo("No server registered: add one with `aicortex servers add http://HOST:11434`.")
        return
    now = time.time()
    with_headers = any(s.headers_env for s in found)  # the column only when some server has one
    rows = [
        (
            s.name,
            s.url,
            "yes" if s.enabled else "no",
            s.status,
            s.version or "",
            _models_cell(s.models),
            humanize_ago(s.last_seen_at, now),
            truncate(s.last_error or ""),
        )
        + ((_headers_cell(s),) if with_headers else ())
        for s in found
    ]
    headers = ["name", "url", "enabled", "status", "version", "models", "last seen", "last error"]
    click.echo(format_table(headers + (["headers (from env)"] if with_headers else []), rows))


@servers.command(name="remove")
@click.argument("server")
@db_option
def servers_remove(server: str, db: str | None) -> None:
    """Remove a server (by name or URL) and its model list."""
    with open_registry(db) as reg:
        removed = reg.remove(server)
    click.echo(f"Removed {_label(removed)}.")


@servers.command(name="enable")
@click.argument("server")
@db_option
def servers_enable(server: str, db: str | None) -> None:
    """Enable a server (by name or URL): chat may use it again."""
    with open_registry(db) as reg:
        s = reg.enable(server)
    click.echo(f"Enabled {_label(s)}.")


@servers.command(name="disable")
@click.argument("server")
@db_option
def servers_disable(server: str, db: str | None) -> None:
    """Disable a server (by name or URL): kept in the registry, never used."""
    with open_registry(db) as reg:
        s = reg.disable(server)
    click.echo(f"Disabled {_label(s)}.")


# -- refresh --------------------------------------------------------------------------------------
@cli.command()
@click.argument("server_names", metavar="[SERVER]...", nargs=-1)
@db_option
def refresh(server_names: tuple[str, ...], db: str | None) -> None:
    """Probe servers (all enabled ones, or the SERVER names/URLs given) and store what they serve.

    Asks each server for /api/version, /api/tags and /api/ps. Exits 0 when at least one
    server is up, 1 when all are down.
    """
    with open_client(db) as client:
        targets = list(server_names) or None
        if targets is None:
            known = client.registry.servers(enabled_only=True)
        else:
            known = [client.registry.get(s) for s in targets]
        if not known:
            raise click.ClickException(
                "no enabled server to refresh: add one with `aicortex servers add http://HOST:11434`"
            )
        names = {s.url: s.name for s in client.registry.servers()}
        with click.progressbar(length=len(known), label="Probing servers", file=sys.stderr) as bar:
            report = client.refresh(targets, on_result=lambda _result: bar.update(1))
    click.echo(
        f"{_plural(report.up, 'server')} up, {report.down} down, {_plural(len(report.models), 'model')}"
        f" ({report.elapsed_s:.2f}s)"
    )
    for r in report.results:
        if not r.ok:
            click.echo(f"  down: {names.get(r.url, r.url)} ({r.url}): {r.error or ''}")
    if report.up == 0:
        raise click.ClickException(f"all {_plural(report.down, 'server')} are down")


# -- models ---------------------------------------------------------------------------------------
@cli.command()
@click.argument("model", required=False, callback=_check_model)
@json_option
@db_option
def models(model: str | None, as_json: bool, db: str | None) -> None:
    """List the models the enabled servers have, or the servers that have MODEL.

    With MODEL, the servers are listed in the order chat would try them, with whether
    the model is loaded there (warm, per /api/ps). Refreshes first when the registry
    was never refreshed or is stale.
    """
    with open_client(db) as client:
        if model is None:
            names = client.models()
            if as_json:
                _echo_json(names)
            elif names:
                click.echo("\n".join(names))
            else:
                click.echo("No model found: `aicortex refresh`, or `aicortex servers list` to see why.", err=True)
            return
        route = client.route(model)  # the order list_model_servers() gives, with /api/ps warmth
        ranked = [(c.server, c.warm) for c in route.candidates + route.skipped]
        if as_json:
            _echo_json([{**_server_json(s), "warm": w, "rank": i} for i, (s, w) in enumerate(ranked, 1)])
            return
    rows = [
        (i, s.name, s.url, "warm" if w else "no", s.priority, s.status)
        for i, (s, w) in enumerate(ranked, 1)
    ]
    click.echo(format_table(["#", "name", "url", "loaded", "priority", "status"], rows))


# -- chat -----------------------------------------------------------------------------------------
def _parse_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. temperature=0)", ctx=ctx, param=param)
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options[key.strip()] = value
    return options


class _Printer:
    """Writes one chat's events: text to stdout, notices to stderr, as they arrive.

    stdout carries the reply's text and nothing else (plus one final newline, and one
    newline before a restarted reply). Line breaks that only keep the terminal tidy
    (before a notice, after the thinking) go to stderr.
    """

    def __init__(self, names: dict[str, str], *, show_thinking: bool) -> None:
        self.names = names
        self.show_thinking = show_thinking
        self.out_at_line_start = True  # the stdout stream itself
        self.cursor_at_line_start = True  # the terminal both streams share
        self.in_thinking = False

    def name(self, url: str | None) -> str:
        return self.names.get(url or "", url or "?")

    def _err_newline(self) -> None:
        if not self.cursor_at_line_start:
            click.echo("", err=True)
            self.cursor_at_line_start = True
        self.in_thinking = False

    def _notice(self, text: str) -> None:
        self._err_newline()
        click.echo(f"{PREFIX} {text}", err=True)

    def event(self, ev: "StreamEvent") -> None:
        if ev.type == "token":
            if self.in_thinking:
                self._err_newline()
            click.echo(ev.content, nl=False)
            self.out_at_line_start = self.cursor_at_line_start = ev.content.endswith("\n")
        elif ev.type == "thinking":
            if self.show_thinking:
                click.echo(click.style(ev.content, dim=True), nl=False, err=True)
                self.cursor_at_line_start = ev.content.endswith("\n")
                self.in_thinking = True
        elif ev.type == "error":
            self._notice(f"{self.name(ev.server)} failed: {ev.content}")
        elif ev.type == "meta" and ev.meta and ev.meta.get("failover"):
            verb = "continuing" if ev.meta["failover"] == "continue" else "restarting"
            self._notice(f"{verb} on {self.name(ev.meta.get('to'))}")
        elif ev.type == "reset":
            if not self.out_at_line_start:
                click.echo("")
                self.out_at_line_start = self.cursor_at_line_start = True
        elif ev.type == "tool_call":
            self._notice(f"tool call: {ev.tool_name}({json.dumps(ev.tool_args, default=str)})")

    def finish(self) -> None:
        if not self.out_at_line_start:
            click.echo("")
            self.out_at_line_start = self.cursor_at_line_start = True
        self._err_newline()


@cli.command()
@click.argument("prompt", required=False)
@model_option
@click.option("-s", "--system", help="System prompt.")
@click.option("--think/--no-think", default=None, help="Ask for thinking (shown dimmed on stderr) or turn it off; default: not sent.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", callback=_parse_option, help="Ollama option, repeatable; values parsed as JSON when possible (temperature=0).")
@click.option("--on-midstream", type=click.Choice(["continue", "restart", "raise"]), default="continue", show_default=True, help="After a failure mid-reply: continue the partial reply on the next server, restart it, or stop.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds for each per-attempt limit (connect, first token, stall).")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line instead of text.")
@db_option
def chat(
    prompt: str | None,
    model: str,
    system: str | None,
    think: bool | None,
    options: dict[str, Any],
    on_midstream: str,
    timeout: float | None,
    as_json: bool,
    db: str | None,
) -> None:
    """Send PROMPT (or stdin, when omitted or "-") to MODEL and stream the reply.

    The reply goes to stdout token by token; failovers and a summary line (server,
    time to first token, tokens/s, attempts) go to stderr. Exits 1 when every server
    failed, 130 on Ctrl-C.

    \b
        aicortex chat -m llama3.2 "Why is the sky blue?"
        echo "Summarize: ..." | aicortex chat -m llama3.2 -o temperature=0
    """
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("empty prompt: give PROMPT as an argument or pipe it on stdin")
    ctx = click.get_current_context()
    with open_client(db, on_midstream=on_midstream) as client:
        stream = client.chat(
            prompt,
            model=model,
            stream=True,
            system=system,
            options=options or None,
            think=think,
            timeout=timeout,
        )
        names = {s.url: s.name for s in client.registry.servers()}
        printer = _Printer(names, show_thinking=bool(think))
        try:
            with stream:
                for ev in stream:
                    if as_json:
                        click.echo(json.dumps(dataclasses.asdict(ev), default=str))
                    else:
                        printer.event(ev)
        except KeyboardInterrupt:
            stream.close()
            printer.finish()
            ctx.exit(130)
        except AllServersFailed as exc:
            printer.finish()
            raise click.ClickException(_all_failed_message(exc, names)) from exc
        except AICortexError:  # DeadlineExceeded, BadRequest, a ServerError with "raise"
            printer.finish()
            raise
        printer.finish()
        if not as_json:
            click.echo(f"{PREFIX} {_summary(stream)}", err=True)


def _summary(stream: Any) -> str:
    ttft = f"{stream.ttft_s:.3f}s" if stream.ttft_s is not None else "n/a"
    tps = stream.tokens_per_second
    if tps is None and stream.usage is not None:
        tps = stream.usage.tokens_per_second
    parts = [
        f"server={stream.server}",
        f"ttft={ttft}",
        f"tok/s={tps:.1f}" if tps is not None else "tok/s=n/a",
        f"attempts={len(stream.attempts)}",
    ]
    if stream.usage is not None and stream.usage.eval_count is not None:
        parts.append(f"eval_count={stream.usage.eval_count}")
    return " ".join(parts)


# -- bench ----------------------------------------------------------------------------------------
@cli.command()
@model_option
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True, help="Short replies per server.")
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True,
              help="Extra replies per server first (e.g. 1 to load a cold model), not counted.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=32, show_default=True, help="num_predict of each reply.")
@click.option("--prompt", help="The user message of each reply (default: count from 1 to 20).")
@json_option
@db_option
def bench(model: str, runs: int, warmup: int, max_tokens: int, prompt: str | None, as_json: bool, db: str | None) -> None:
    """Measure each server that has MODEL: p50/p95 TTFT and tokens/s over short replies.

    Each reply is pinned to one server (no failover). The figures are stored in the
    registry, and feed the measured TTFT that routing uses.

        aicortex bench -m llama3.2 --runs 10
    """
    from dataclasses import asdict

    with open_client(db) as client:
        progress = (lambda r: click.echo(f"{PREFIX} {r.name}: {r.ok}/{r.runs} ok", err=True)) if not as_json else None
        results = client.bench(model, runs, prompt=prompt, max_tokens=max_tokens, warmup=warmup, on_result=progress)
    if as_json:
        _echo_json([asdict(r) for r in results])
        return

    def ms(v: float | None) -> str:
        return f"{v * 1000:.0f}" if v is not None else "-"

    def rate(v: float | None) -> str:
        return f"{v:.1f}" if v is not None else "-"

    rows = [
        (r.name, r.server, f"{r.ok}/{r.runs}", ms(r.ttft_p50_s), ms(r.ttft_p95_s),
         rate(r.tps_p50), rate(r.tps_p95), rate(r.server_tps_p50), truncate(r.errors[0] if r.errors else "", 40))
        for r in results
    ]
    click.echo(format_table(
        ["name", "url", "ok", "ttft p50 ms", "ttft p95 ms", "tok/s p50", "tok/s p95", "server tok/s p50", "error"], rows
    ))
    if all(r.ok == 0 for r in results):
        raise click.ClickException(f"every server failed every run of {model!r}")


# -- fleet operations ----------------------------------------------------------------------------
def server_option(fn: F) -> F:
    """``--server S`` (repeatable): a server's name or URL to act on instead of the default set."""
    return click.option(
        "--server",
        "server_names",
        multiple=True,
        metavar="SERVER",
        help="A server name or URL to act on (repeatable); default: see above.",
    )(fn)


def _model_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    checked = _check_model(ctx, param, value)
    assert checked is not None
    return checked


def human_bytes(n: int | None) -> str:
    """``4.1 GB``, ``512 MB``, ``12 KB``, ``7 B`` (powers of 1000, as Ollama shows sizes)."""
    if n is None:
        return "-"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def humanize_in(ts: float | None, now: float | None = None) -> str:
    """``in 4m``, ``in 2h``; ``never`` for ``None`` (no expiry); ``now`` once past."""
    if ts is None:
        return "never"
    delta = ts - (time.time() if now is None else now)
    if delta <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"in {int(delta // size)}{unit}"
    return f"in {int(delta)}s"


def _names(client: "Client") -> dict[str, str]:
    return {s.url: s.name for s in client.registry.servers()}


def _targets(server_names: tuple[str, ...]) -> list[str] | None:
    return list(server_names) or None


def _echo_results(results: "Sequence[OpResult]", names: dict[str, str], as_json: bool, verb: str, empty: str) -> None:
    """The per-server outcome of an operation as a table (or JSON); exit 1 if one failed."""
    if as_json:
        _echo_json([{**dataclasses.asdict(r), "name": names.get(r.server)} for r in results])
    elif not results:
        click.echo(empty)
    else:
        rows = [(names.get(r.server, r.server), r.server, verb if r.ok else "failed", truncate(r.error or "", 70)) for r in results]
        click.echo(format_table(["server", "url", "result", "error"], rows))
    failed = [r for r in results if not r.ok]
    if failed:
        raise click.ClickException(f"{_plural(len(failed), 'server')} of {len(results)} failed")


@cli.command()
@server_option
@json_option
@db_option
def ps(server_names: tuple[str, ...], as_json: bool, db: str | None) -> None:
    """Show the models loaded right now on every enabled server (or each --server).

    Asks each server's /api/ps concurrently. A server that does not answer is named on
    stderr; exits 1 only when none answered.
    """
    with open_client(db) as client:
        report = client.ps(_targets(server_names))
        names = _names(client)
    if as_json:
        _echo_json({
            "models": [{**dataclasses.asdict(m), "name_of_server": names.get(m.server)} for m in report],
            "errors": report.errors,
        })
    else:
        now = time.time()
        rows = [
            (names.get(m.server, m.server), m.name, human_bytes(m.size), human_bytes(m.size_vram),
             m.context_length if m.context_length is not None else "-", humanize_in(m.expires_at, now))
            for m in report
        ]
        if rows:
            click.echo(format_table(["server", "model", "size", "vram", "context", "expires"], rows))
        elif not report.errors:
            click.echo("No model is loaded.")
        for url, reason in report.errors.items():
            click.echo(f"{PREFIX} down: {names.get(url, url)} ({url}): {reason}", err=True)
    if report.servers and len(report.errors) == len(report.servers):
        raise click.ClickException(f"no server answered /api/ps ({_plural(len(report.servers), 'server')} asked)")


@cli.command()
@click.argument("model", callback=_model_arg)
@json_option
@db_option
def show(model: str, as_json: bool, db: str | None) -> None:
    """Show what a server that has MODEL says about it (/api/show).

    Asks the servers that list MODEL in routing order, going on to the next when one
    fails. --json prints the whole reply.
    """
    with open_client(db) as client:
        info = client.show(model)
        names = _names(client)
    if as_json:
        _echo_json({**info, "server": info.server})
        return
    def field(key: str, kind: type) -> Any:
        value = info.get(key)
        return value if isinstance(value, kind) else kind()

    details, model_info, capabilities = field("details", dict), field("model_info", dict), field("capabilities", list)
    context = next((v for k, v in model_info.items() if str(k).endswith(".context_length")), None)
    rows = [
        ("server", f"{names.get(info.server, info.server)} ({info.server})"),
        ("family", details.get("family", "")),
        ("parameters", details.get("parameter_size", "")),
        ("quantization", details.get("quantization_level", "")),
        ("context length", context if context is not None else ""),
        ("capabilities", ", ".join(str(c) for c in capabilities)),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':16} {value}")


class _PullPrinter:
    """One line on stderr per server and step: a new status, or 25 % more of a layer."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.last: dict[str, tuple[str, int]] = {}

    def __call__(self, p: "PullProgress") -> None:
        pct = -1
        if p.total:
            pct = min(100, (p.completed or 0) * 100 // p.total)
        status, shown = self.last.get(p.server, ("", -1))
        if status == p.status and (pct < 0 or pct < shown + 25) and pct != 100:
            return
        self.last[p.server] = (p.status, pct)
        extra = f" {pct}% of {human_bytes(p.total)}" if pct >= 0 else ""
        click.echo(f"{PREFIX} {self.names.get(p.server, p.server)}: {p.status}{extra}", err=True)


@cli.command()
@click.argument("model", callback=_model_arg)
@server_option
@json_option
@db_option
def pull(model: str, server_names: tuple[str, ...], as_json: bool, db: str | None) -> None:
    """Pull MODEL on every enabled server (or each --server) at once.

    Progress goes to stderr, a line per server and step; then a table of what each
    server did. The servers that succeeded are refreshed. Exits 1 if one failed.
    """
    with open_client(db) as client:
        names = _names(client)
        results = client.pull(model, _targets(server_names), on_progress=None if as_json else _PullPrinter(names))
    _echo_results(results, names, as_json, "pulled", "No server to pull on.")


@cli.command()
@click.argument("model", callback=_model_arg)
@server_option
@json_option
@db_option
def delete(model: str, server_names: tuple[str, ...], as_json: bool, db: str | None) -> None:
    """Delete MODEL from every enabled server that lists it (or each --server).

    Exits 1 if one failed.
    """
    with open_client(db) as client:
        names = _names(client)
        results = client.delete(model, _targets(server_names))
    _echo_results(results, names, as_json, "deleted", "No server to delete on.")


@cli.command()
@click.argument("source", callback=_model_arg)
@click.argument("destination", callback=_model_arg)
@server_option
@json_option
@db_option
def copy(source: str, destination: str, server_names: tuple[str, ...], as_json: bool, db: str | None) -> None:
    """Copy SOURCE to DESTINATION on every enabled server that lists SOURCE (or each --server).

    Exits 1 if one failed.
    """
    with open_client(db) as client:
        names = _names(client)
        results = client.copy(source, destination, _targets(server_names))
    _echo_results(results, names, as_json, "copied", "No server to copy on.")


@cli.command()
@click.argument("model", callback=_model_arg)
@server_option
@click.option("--keep-alive", help="How long it stays loaded (Ollama keep_alive: 10m, 1h, -1 for ever; a number is seconds).")
@json_option
@db_option
def warm(model: str, server_names: tuple[str, ...], keep_alive: str | None, as_json: bool, db: str | None) -> None:
    """Load MODEL into memory on the first server chat would use (or on each --server).

    When the first server fails the next is tried. Exits 1 if one failed.
    """
    ka: str | float | None = keep_alive
    if keep_alive is not None:
        try:
            ka = float(keep_alive)
        except ValueError:
            ka = keep_alive
    with open_client(db) as client:
        names = _names(client)
        results = client.warm(model, _targets(server_names), keep_alive=ka)
    _echo_results(results, names, as_json, "loaded", "No server to load on.")


@cli.command()
@click.argument("model", callback=_model_arg)
@server_option
@json_option
@db_option
def unload(model: str, server_names: tuple[str, ...], as_json: bool, db: str | None) -> None:
    """Unload MODEL from every server where it is loaded now (/api/ps), or from each --server.

    Exits 1 if one failed.
    """
    with open_client(db) as client:
        names = _names(client)
        results = client.unload(model, _targets(server_names))
    _echo_results(results, names, as_json, "unloaded", f"{model} is loaded nowhere.")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=11435, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option(
    "--keys-file", type=click.Path(dir_okay=False, path_type=str), default=None,
    help="File of API keys, one per line (also env AICORTEX_GATEWAY_KEYS, comma-separated, "
    "or AICORTEX_GATEWAY_KEYS_FILE). With keys, clients send 'Authorization: Bearer KEY'.",
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without API keys.")
@click.option("--max-active", default=512, show_default=True, type=click.IntRange(1), help="Generating requests in flight at once.")
@click.option("--max-queue", default=1024, show_default=True, type=click.IntRange(0), help="Requests waiting beyond that (then 503).")
@click.option("--per-client", default=128, show_default=True, type=click.IntRange(0), help="Requests in flight per client key or IP (0: no limit).")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(0, min_open=True), help="Largest request body, MiB (then 413).")
@click.option("--headers-timeout", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True), help="Seconds a connection may take to send its request headers (slow-loris), then closed.")
@click.option("--refresh-interval", default=30.0, show_default=True, type=click.FloatRange(0), help="Seconds between fleet refreshes (0: only at start).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]), help="Log level (access log lines are info).")
@db_option
def serve(
    host: str, port: int, keys_file: str | None, insecure: bool, max_active: int, max_queue: int, per_client: int,
    max_body_mb: float, headers_timeout: float, refresh_interval: float, log_level: str, db: str | None,
) -> None:
    """Run the gateway: the Ollama and OpenAI APIs in front of the fleet.

    Every client of Ollama or OpenAI gets mid-reply failover that it does not see
    (needs `pip install 'aicortex[gateway]'`).

    Point any Ollama client at http://HOST:PORT (OLLAMA_HOST=HOST:PORT) and any OpenAI
    client at http://HOST:PORT/v1. A non-loopback --host needs API keys (or --insecure).
    """
    import logging

    from .gateway import create_app
    from .gateway._security import is_loopback, load_keys
    from .gateway._server import http_protocol

    with library_errors():
        keys = load_keys(keys_file=keys_file)
    if not is_loopback(host) and not keys and not insecure:
        raise click.ClickException(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use the fleet. "
            "Set AICORTEX_GATEWAY_KEYS or --keys-file, bind 127.0.0.1, or pass --insecure"
        )
    try:
        import uvicorn
    except ImportError as exc:
        raise click.ClickException("the gateway needs uvicorn: pip install 'aicortex[gateway]'") from exc
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    gw_log = logging.getLogger("aicortex.gateway")
    gw_log.addHandler(handler)
    gw_log.setLevel(log_level.upper())
    with open_registry(db) as reg:
        with library_errors():
            app = create_app(
                reg, api_keys=keys, max_active=max_active, max_queue=max_queue, per_client=per_client or None,
                max_body_bytes=int(max_body_mb * 1024 * 1024), refresh_interval_s=refresh_interval or None,
            )
        servers = [s for s in reg.servers() if s.enabled]
        click.echo(
            f"{PREFIX} gateway on http://{host}:{port} (Ollama API; OpenAI API under /v1), "
            f"{_plural(len(servers), 'server')}, API keys {'on' if keys else 'off'}",
            err=True,
        )
        uvicorn.run(
            app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
            http=http_protocol(headers_timeout),
        )


def main() -> None:  # pragma: no cover - console entry point alias
    cli()


if __name__ == "__main__":  # pragma: no cover
    cli()


@cli.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and logs).")
@db_option
def top(interval: float, once: bool, db: str | None) -> None:
    """A live view of the fleet, refreshed every second until Ctrl-C.

    Per server: up/down (its /api/ps, asked now), circuit breaker, loaded models,
    requests in flight (every process's, with a PostgreSQL registry), TTFT p50/p95 (the
    last `aicortex bench`: this command sends no chat), EWMA TTFT and tokens/s from the
    registry. Needs rich: pip install 'aicortex[top]'.
    """
    from ._config import Timeouts
    from ._exceptions import ConfigError
    from .top import run, shares_inflight

    try:
        import rich  # noqa: F401
    except ImportError as exc:
        raise click.ClickException("aicortex top needs rich: pip install 'aicortex[top]'") from exc
    limits = Timeouts(connect=1.0, first_token=1.0, first_token_cold=1.0, stall=1.0)
    with open_client(db, timeout=limits, probe_timeout_s=1.0, refresh_ttl_s=None) as client:
        try:
            run(client, interval_s=interval, once=once, inflight=shares_inflight(client))
        except ConfigError as exc:  # pragma: no cover - rich checked above
            raise click.ClickException(str(exc)) from exc
