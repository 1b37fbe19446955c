"""Candidate ordering for one model: pure, no I/O.

Order (first tried first):

1. servers where the model is warm (listed by Ollama /api/ps at the last refresh);
2. higher ``priority``;
3. the order the servers were registered.

Servers that do not list the model (Ollama /api/tags) are never candidates.
"""

from __future__ import annotations

from typing import Sequence

from ._models import ModelEntry, Server
from ._session import Candidate

__all__ = ["order_candidates"]


def order_candidates(entries: Sequence[tuple[Server, ModelEntry]]) -> list[Candidate]:
    """Order ``(server, model entry)`` pairs into the candidates ``chat()`` tries.

    ``entries`` come from :meth:`Registry.model_entries` (already in priority, then
    registration order); the sort is stable, so equals keep that order.
    """
    ranked = sorted(
        enumerate(entries),
        key=lambda item: (not item[1][1].loaded, -item[1][0].priority, item[0]),
    )
    return [Candidate(server=server, warm=entry.loaded) for _, (server, entry) in ranked]
