"""``aicortex top``: a live terminal view of the fleet (needs ``pip install 'aicortex[top]'``).

One row per registered server, refreshed every second:

* **state**: ``up`` when its ``GET /api/ps`` (Ollama ``docs/api.md``, "List Running
  Models") answered just now, ``down`` (with the reason) when it did not, ``disabled``;
* **breaker**: the worst circuit breaker of the server and its (server, model) records in
  the registry: ``closed``, ``open 12s`` (cooldown left), ``half-open``;
* **loaded**: the models that ``/api/ps`` lists as loaded (warm) right now;
* **in-flight**: requests to it in flight from this process plus, with a registry that
  shares them (PostgreSQL: every process's in-flight counts are leases in the store), from
  every other process; a standalone ``aicortex top`` on an SQLite registry cannot see
  other processes' requests and shows ``-``;
* **TTFT p50 / p95**: from this process's window of recent TTFTs per server (the one
  hedged requests use, :data:`aicortex._hedge.TTFT_WINDOWS`, marked ``r``) when the
  process has made requests; otherwise from the registry's latest ``aicortex bench`` of
  the server (marked ``b``); the registry keeps no per-request TTFTs, so a standalone
  ``aicortex top`` cannot compute live quantiles;
* **TTFT EWMA** and **tokens/s**: the registry's EWMA figures (written by every process
  that uses the registry), of the model the server answered last.

Use :func:`collect` (sync :class:`~aicortex.Client`) or :func:`acollect`
(:class:`~aicortex.AsyncClient`) for the data, :func:`render` / :func:`render_text` for a
frame, and :func:`run` for the live view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ._exceptions import ConfigError
from ._health import breaker_state

if TYPE_CHECKING:  # pragma: no cover
    from ._client import AsyncClient, BaseClient, Client
    from ._fleetops import PsReport

__all__ = ["ServerRow", "Frame", "collect", "acollect", "render", "render_text", "run", "shares_inflight"]


@dataclass(frozen=True)
class ServerRow:
    """One server's line of the view.

    Fields:
        name, url: the server.
        state: ``"up"``, ``"down"`` or ``"disabled"``.
        error: why it is down (``/api/ps`` failed), else ``None``.
        breaker: ``"closed"``, ``"open"`` or ``"half-open"`` (the worst of the server's
            records); ``cooldown_s``: seconds of cooldown left when open.
        loaded: models loaded right now (``/api/ps``).
        inflight: requests in flight to it: this process's, plus every other process's
            where the registry shares them (PostgreSQL); ``None``: not shown.
        ttft_p50_s, ttft_p95_s: TTFT quantiles, seconds; ``ttft_source``: ``"recent"``
            (this process's window, ``samples`` TTFTs), ``"bench"`` (the last ``aicortex
            bench``) or ``""`` (none).
        ewma_ttft_s, tokens_per_second: the registry's EWMA TTFT (seconds) and
            client-measured tokens/s of the model it answered last.
    """

    name: str
    url: str
    state: str
    error: str | None = None
    breaker: str = "closed"
    cooldown_s: float | None = None
    loaded: tuple[str, ...] = ()
    inflight: int | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_source: str = ""
    samples: int = 0
    ewma_ttft_s: float | None = None
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class Frame:
    """One refresh of the view: ``rows`` (one per server, registry order), taken at ``at``
    (Unix seconds)."""

    at: float
    rows: tuple[ServerRow, ...]


def shares_inflight(client: "BaseClient") -> bool:
    """The client's registry shares every process's in-flight counts (PostgreSQL leases)."""
    return callable(getattr(client.registry, "sync_inflight", None))


def collect(client: "Client", *, inflight: bool = True) -> Frame:
    """Read the registry (now) and ask every enabled server's ``/api/ps`` (concurrently,
    bounded by the client's connect and probe timeouts); never raises for a server that
    does not answer. ``inflight=False`` leaves the in-flight column out."""
    client.fleet.sync()  # other processes' in-flight leases, where the store has them
    client.fleet.reload()
    report = client.ps() if _enabled(client) else None
    return _frame(client, report, inflight)


async def acollect(client: "AsyncClient", *, inflight: bool = True) -> Frame:
    """:func:`collect` for an :class:`~aicortex.AsyncClient` (the registry is read off the
    event loop)."""
    import asyncio

    await asyncio.to_thread(client.fleet.sync)
    await asyncio.to_thread(client.fleet.reload)
    report = await client.ps() if _enabled(client) else None
    return _frame(client, report, inflight)


def _enabled(client: "BaseClient") -> bool:
    return any(s.enabled for s in client.fleet.snapshot.servers)


def _frame(client: "BaseClient", report: "PsReport | None", inflight: bool) -> Frame:
    from ._hedge import TTFT_WINDOWS
    from ._protocol import model_key

    now = time.time()
    fleet = client.fleet
    snap = fleet.snapshot
    loaded: dict[str, list[str]] = {}
    for m in report or ():
        loaded.setdefault(m.server, []).append(m.name)
    errors = report.errors if report is not None else {}
    rows = []
    for server in snap.servers:
        url = server.url
        keys = list(dict.fromkeys(model_key(m) for m in server.models))
        records = [("", fleet.health(url))] + [(key, fleet.health(url, key)) for key in keys]
        breaker, until = "closed", None
        for _, h in records:
            state = breaker_state(h, now)
            if state == "open":
                breaker, until = "open", max(until or 0.0, h.open_until or 0.0)
            elif state == "half_open" and breaker == "closed":
                breaker = "half-open"
        latest = max(
            (h for record, h in records if record and h.ewma_ttft_s is not None),
            key=lambda h: h.last_success_at or 0.0, default=None,
        )
        count, (p50, p95) = TTFT_WINDOWS.server_quantiles(url)
        source = "recent" if count else ""
        if not count:
            p50, p95, source = _bench(client, url, keys)
        rows.append(
            ServerRow(
                name=server.name,
                url=url,
                state="disabled" if not server.enabled else "down" if url in errors else "up",
                error=errors.get(url),
                breaker=breaker,
                cooldown_s=None if until is None else max(0.0, until - now),
                loaded=tuple(loaded.get(url, ())),
                inflight=fleet.inflight(url) + fleet.inflight_elsewhere(url) if inflight else None,
                ttft_p50_s=p50,
                ttft_p95_s=p95,
                ttft_source=source,
                samples=count,
                ewma_ttft_s=latest.ewma_ttft_s if latest else None,
                tokens_per_second=latest.ewma_tps if latest else None,
            )
        )
    return Frame(at=now, rows=tuple(rows))


def _bench(client: "BaseClient", url: str, models: Sequence[str]) -> tuple[float | None, float | None, str]:
    """The latest ``aicortex bench`` p50/p95 TTFT of ``url`` over its models."""
    best: dict[str, Any] | None = None
    registry: Any = client.registry
    for model in models:
        try:
            figures = registry.bench_results(model).get(url)
        except Exception:  # a store without bench figures, or a storage error: none shown
            return None, None, ""
        if figures and figures.get("ttft_p50_s") is not None and (best is None or figures["measured_at"] > best["measured_at"]):
            best = figures
    if best is None:
        return None, None, ""
    return best["ttft_p50_s"], best.get("ttft_p95_s"), "bench"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 0.01 else f"{value * 1000:,.0f} ms"


def render(frame: Frame) -> Any:
    """A ``rich`` table of ``frame``.

    Raises:
        ConfigError: ``rich`` is not installed (``pip install 'aicortex[top]'``).
    """
    try:
        from rich.table import Table
        from rich.text import Text
    except ImportError as exc:
        raise ConfigError("aicortex top needs rich: pip install 'aicortex[top]'") from exc
    up = sum(1 for r in frame.rows if r.state == "up")
    table = Table(
        title=f"aicortex top: {up} of {len(frame.rows)} servers up, {time.strftime('%H:%M:%S', time.localtime(frame.at))}",
        caption="TTFT p50/p95: r = recent replies of this process, b = last `aicortex bench`; EWMA and tokens/s: registry",
        expand=False,
    )
    for name, justify in (
        ("server", "left"), ("state", "left"), ("breaker", "left"), ("loaded", "left"), ("in-flight", "right"),
        ("TTFT p50", "right"), ("TTFT p95", "right"), ("TTFT EWMA", "right"), ("tokens/s", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in frame.rows:
        state = Text(r.state, style={"up": "green", "down": "bold red"}.get(r.state, "dim"))
        if r.error:
            state.append(f" {r.error[:40]}", style="red")
        breaker = Text(
            f"open {r.cooldown_s:.0f}s" if r.breaker == "open" and r.cooldown_s is not None else r.breaker,
            style={"closed": "green", "open": "bold red", "half-open": "yellow"}.get(r.breaker, ""),
        )
        mark = {"recent": " r", "bench": " b"}.get(r.ttft_source, "")
        table.add_row(
            f"{r.name}\n[dim]{r.url}[/dim]",
            state,
            breaker,
            ", ".join(r.loaded) or "-",
            "-" if r.inflight is None else str(r.inflight),
            _ms(r.ttft_p50_s) + mark,
            _ms(r.ttft_p95_s) + mark,
            _ms(r.ewma_ttft_s),
            "-" if r.tokens_per_second is None else f"{r.tokens_per_second:,.1f}",
        )
    return table


def render_text(frame: Frame, *, width: int = 160) -> str:
    """``frame`` rendered as plain text (no colours), ``width`` columns wide."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(render(frame))
    return out.getvalue()


_sleep = time.sleep  # (a test replaces it)


def run(client: "Client", *, interval_s: float = 1.0, once: bool = False, inflight: bool = True, console: Any = None) -> None:
    """Show the view, refreshed every ``interval_s`` seconds, until Ctrl-C (``once``: one
    frame, printed). ``console``: a ``rich.console.Console`` (default: the terminal)."""
    if console is None:
        try:
            from rich.console import Console
        except ImportError as exc:
            raise ConfigError("aicortex top needs rich: pip install 'aicortex[top]'") from exc
        console = Console()
    if once:
        console.print(render(collect(client, inflight=inflight)))
        return
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from ._exceptions import AICortexError

    frame = collect(client, inflight=inflight)
    with Live(render(frame), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                _sleep(interval_s)
                try:
                    frame = collect(client, inflight=inflight)
                except AICortexError as exc:  # e.g. the registry is locked: keep the last frame, say why
                    live.update(Group(render(frame), Text(f"refresh failed: {exc}", style="red")), refresh=True)
                    continue
                live.update(render(frame), refresh=True)
        except KeyboardInterrupt:
            return
