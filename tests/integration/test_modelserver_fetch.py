"""The init container's fetch (`python -m modelserver.fetch`) against a real HTTP server on loopback.

What a pod with RenderSettings.model_url runs before its model server: the archive is downloaded,
checked and unpacked all or nothing, and the real model server then serves what was fetched.
"""
from __future__ import annotations

import functools
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import requests

from modelserver.fetch import FetchError, fetch_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path: Path):
    """Serve tmp_path/site over HTTP on 127.0.0.1; yield (folder, base URL)."""
    folder = tmp_path / "site"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _archive(model_dir: Path, target: Path) -> None:
    with tarfile.open(target, "w:gz") as archive:
        archive.add(model_dir, arcname=".")


def _hostile(target: Path, name: str, *, link: bool = False) -> None:
    with tarfile.open(target, "w:gz") as archive:
        info = tarfile.TarInfo("1/model.onnx")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
        bad = tarfile.TarInfo(name)
        if link:
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(bad)
        else:
            bad.size = 1
            archive.addfile(bad, io.BytesIO(b"x"))


def test_fetched_model_is_served_by_the_real_model_server(site, built_models, tmp_path):
    folder, base = site
    _archive(built_models / "half_plus_two", folder / "half_plus_two.tar.gz")
    dest = tmp_path / "models" / "half_plus_two"
    out = subprocess.run([sys.executable, "-m", "modelserver.fetch", "--url", f"{base}/half_plus_two.tar.gz",
                          "--dest", str(dest)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in (built_models / "half_plus_two").iterdir())
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]       # no leftovers
    # The model server, started as the template starts it, serves what was fetched.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "modelserver", "--host", "127.0.0.1", f"--rest_api_port={port}",
                             "--model_name=half_plus_two", f"--model_base_path={dest}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answer = None
        for _ in range(300):
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict",
                                       json={"instances": [1.0, 2.0, 5.0]}, timeout=5)
                break
            except requests.ConnectionError:
                if proc.poll() is not None:
                    break
                threading.Event().wait(0.1)
        assert answer is not None and answer.json() == {"predictions": [2.5, 3.0, 4.5]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # A second run (a restarted pod) keeps what is there.
    again = subprocess.run([sys.executable, "-m", "modelserver.fetch", "--url", f"{base}/missing.tar.gz",
                            "--dest", str(dest)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "kept" in again.stdout


@pytest.mark.parametrize("name, link, message", [
    ("../escape", False, "outside the model folder"),
    ("/etc/evil", False, "outside the model folder"),
    ("1/link", True, "links and devices"),
])
def test_hostile_archives_are_refused_and_nothing_is_left(site, tmp_path, name, link, message):
    folder, base = site
    _hostile(folder / "bad.tar.gz", name, link=link)
    dest = tmp_path / "models" / "m"
    with pytest.raises(FetchError, match=message):
        fetch_model(f"{base}/bad.tar.gz", dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_http_errors_and_bad_archives_are_one_line_and_exit_1(site, tmp_path):
    folder, base = site
    (folder / "not-a-tar.tar.gz").write_bytes(b"hello")
    with tarfile.open(folder / "empty.tar.gz", "w:gz"):
        pass
    for url, message in ((f"{base}/nope.tar.gz", "HTTP 404"), (f"{base}/not-a-tar.tar.gz", "not a readable tar"),
                         (f"{base}/empty.tar.gz", "no version folder"), ("ftp://127.0.0.1/x", "only http")):
        out = subprocess.run([sys.executable, "-m", "modelserver.fetch", "--url", url, "--dest",
                              str(tmp_path / "m")], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "m").exists()
    with pytest.raises(FetchError, match="larger than"):
        _archive_path = folder / "big.tar.gz"
        with tarfile.open(_archive_path, "w:gz") as archive:
            info = tarfile.TarInfo("1/blob")
            info.size = 5000
            archive.addfile(info, io.BytesIO(bytes(5000)))
        fetch_model(f"{base}/big.tar.gz", tmp_path / "m", max_bytes=10)
