"""The shared log format (common/logs.py): one JSON object a line, or a readable line on a terminal."""
from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys

from common.logs import HumanFormatter, JsonFormatter, formatter_for, setup_logging

from tests.conftest import REPO_ROOT


def _record(msg="hello %s", args=("you",), level=logging.INFO, **extra) -> logging.LogRecord:
    record = logging.LogRecord("frontend.provision", level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_the_four_head_fields_then_the_extra_fields():
    line = JsonFormatter("frontend").format(_record(event="provision_failed", model="m", fields={"node": "a"}))
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "component", "message"]
    assert entry["level"] == "info" and entry["component"] == "frontend" and entry["message"] == "hello you"
    assert entry["event"] == "provision_failed" and entry["model"] == "m" and entry["node"] == "a"
    assert entry["logger"] == "frontend.provision" and entry["time"].endswith("Z") and "T" in entry["time"]


def test_an_extra_field_cannot_overwrite_the_head():
    entry = json.loads(JsonFormatter("backend").format(_record(fields={"component": "x", "message": "y"})))
    assert entry["component"] == "backend" and entry["message"] == "hello you"


def test_exceptions_are_one_field_of_the_same_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter("modelserver").format(record))
    assert entry["level"] == "error" and "ValueError: boom" in entry["exception"]


def test_human_line_reads_like_a_sentence():
    line = HumanFormatter("frontend").format(_record(level=logging.WARNING, event="e", model="m"))
    assert " WARNING frontend: hello you  event=e model=m" in line and not line.startswith("{")


def test_the_format_follows_the_terminal_unless_told():
    assert isinstance(formatter_for("x", io.StringIO(), environ={}), JsonFormatter)
    assert not isinstance(formatter_for("x", io.StringIO(), environ={}), HumanFormatter)
    assert isinstance(formatter_for("x", io.StringIO(), environ={"LOG_FORMAT": "human"}), HumanFormatter)
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as tty:
        assert isinstance(formatter_for("x", tty, environ={}), HumanFormatter)
        assert not isinstance(formatter_for("x", tty, environ={"LOG_FORMAT": "json"}), HumanFormatter)
    os.close(leader)


def test_setup_logging_is_idempotent_and_covers_every_named_logger():
    stream = io.StringIO()
    for _ in range(2):
        setup_logging("backend", level="INFO", loggers=("test_logs_a", "test_logs_b"), stream=stream)
    logging.getLogger("test_logs_a.child").info("one", extra={"event": "x"})
    logging.getLogger("test_logs_b").debug("not at INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["component"] == "backend"


def test_the_model_server_writes_the_shared_format():
    """A real model server started with a bad flag logs its failure in the shared format."""
    out = subprocess.run([sys.executable, "-m", "modelserver", "--rest_api_port", "1", "--model_name", "m",
                          "--model_base_path", "/nonexistent"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "LOG_FORMAT": ""})
    assert out.returncode != 0
    entries = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert entries and entries[-1]["component"] == "modelserver" and entries[-1]["level"] == "error"
    assert entries[-1]["event"] == "startup_failed"


def test_the_default_handler_writes_to_the_current_stderr(monkeypatch):
    setup_logging("backend", level="INFO", loggers=("test_logs_c",))
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)          # e.g. a test's capture, replaced per test
    logging.getLogger("test_logs_c").warning("to the new stream")
    assert json.loads(swapped.getvalue())["message"] == "to the new stream"
