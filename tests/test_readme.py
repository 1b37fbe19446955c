"""The README is the front door: its runnable example runs, its commands are the ones CI runs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(marker: str) -> str:
    match = re.search(re.escape(marker) + r".*?\n```python\n(.*?)```", README, re.S)
    assert match, f"README block {marker!r} not found"
    return match.group(1)


def test_failover_example_runs_and_streams_from_the_third_server(capsys):
    threads = threading.active_count()
    exec(compile(_block("<!-- example: failover"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    lines = out.splitlines()
    notices = [ln for ln in lines if ln.startswith("[")]
    text = "".join(re.sub(r"\[[^\]]*\]", "", ln) for ln in lines[:-1])
    assert text == "Paris is the capital of France."  # no word lost or repeated on screen
    assert len(notices) == 3  # refused, died after 3 tokens, continue on the third
    assert "connection refused" in notices[0] and "connection lost" in notices[1]
    assert notices[2].startswith("[continue on http://127.0.0.1:")
    summary = lines[-1]
    assert re.fullmatch(r"server=http://127\.0\.0\.1:\d+ ttft=\d+\.\d{3}s tok/s=\d+", summary), summary
    assert threading.active_count() <= threads


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"^(python3 -m venv .*pip install -e '\.\[test\]')$", README, re.M)
    test = re.search(r"^(python -m pytest)\s", README, re.M)
    assert install and test
    assert install.group(1) in ci.splitlines()
    assert "python -m pytest" in ci.splitlines()
