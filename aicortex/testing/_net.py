"""Addresses that fail at the TCP level: a refused port and a port whose connects hang.

Example::

    import httpx
    from aicortex.testing import blackhole_listener, closed_port_url

    httpx.get(closed_port_url() + "/api/version")      # raises httpx.ConnectError
    with blackhole_listener() as url:
        httpx.get(url + "/api/version", timeout=0.5)   # raises httpx.ConnectTimeout
"""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator

__all__ = ["closed_port_url", "blackhole_listener"]


def closed_port_url(host: str = "127.0.0.1") -> str:
    """Return ``"http://127.0.0.1:PORT"`` for a port nothing listens on: connects are refused.

    The port is taken from the kernel (bind to port 0) and released at once, so
    another program could in principle grab it later; in practice it stays free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"http://{host}:{port}"


@contextlib.contextmanager
def blackhole_listener(host: str = "127.0.0.1", fill_timeout: float = 0.05) -> Iterator[str]:
    """Yield ``"http://127.0.0.1:PORT"`` whose TCP connects hang until the client's connect timeout.

    A socket listens with a backlog of 0 and never accepts; dummy connections
    fill its accept queue, after which Linux drops further SYNs (it never
    answers them), so a client's *connect* times out (``httpx.ConnectTimeout``)
    instead of being refused or getting a reply.  ``fill_timeout`` (seconds)
    is how long one filling connect may take before the queue is deemed full;
    creating the listener therefore takes about that long.  Everything is
    closed on exit.

    Raises RuntimeError if the queue cannot be filled (the trick is Linux
    behaviour; other kernels may answer or reset the SYN).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dummies: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(fill_timeout)
            try:
                s.connect((host, port))
            except (socket.timeout, OSError):
                s.close()
                break
            dummies.append(s)
        else:
            raise RuntimeError("could not fill the accept queue of the blackhole listener")
        yield f"http://{host}:{port}"
    finally:
        for s in dummies:
            s.close()
        listener.close()
