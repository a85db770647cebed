"""`python -m modelserver.fetch --url URL --dest DIR`: put one model's files where the server reads them.

Why: on Kubernetes a model server's pod may get its model from a configured location instead of
carrying it in its image (RenderSettings.model_url): an init container runs this before the
server starts, into the emptyDir mounted at /models. The URL (http, https or file) names a
.tar.gz of the model folder, i.e. the TF Serving layout `<version>/...` (what
`python -m modelserver.build_models` writes under `<out>/<model>`; `tar -czf m.tar.gz -C <out>/<model> .`).

All or nothing: the archive is downloaded to a temporary file (at most --max-bytes), checked
(no absolute paths, no `..`, no links or devices, a numeric version folder at the top) and
unpacked into a temporary folder beside DIR, which is renamed to DIR only when complete. A DIR
that already holds a model is left as it is (a restarted pod keeps what it fetched). Errors are
one line on stderr and exit code 1; bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

__all__ = ["FetchError", "fetch_model", "main"]

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 4 << 30          # 4 GiB


class FetchError(Exception):
    """The model could not be fetched or its archive is not acceptable."""


def _download(url: str, target: Path, *, timeout: float, max_bytes: int) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise FetchError(f"{url}: only http, https and file URLs are fetched")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            size = 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{url}: larger than {max_bytes} bytes")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"{url}: {exc}") from None


def _check_members(archive: tarfile.TarFile, url: str) -> None:
    versions = set()
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise FetchError(f"{url}: refusing archive entry {member.name!r} (outside the model folder)")
        if not (member.isfile() or member.isdir()):
            raise FetchError(f"{url}: refusing archive entry {member.name!r} (links and devices are not unpacked)")
        parts = [p for p in path.parts if p != "."]
        if parts:
            versions.add(parts[0])
    if not versions or not any(v.isdigit() for v in versions):
        raise FetchError(f"{url}: the archive holds no version folder (expected <version>/... at its top)")


def fetch_model(url: str, dest: str | Path, *, timeout: float = 60.0, max_bytes: int = DEFAULT_MAX_BYTES) -> bool:
    """Fetch and unpack the model archive at `url` into `dest`; return False when `dest` already
    held a model (nothing fetched). Raise FetchError on any failure, leaving `dest` untouched."""
    dest = Path(dest)
    if dest.is_dir() and any(p.name.isdigit() for p in dest.iterdir()):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as work:
        archive_path = Path(work) / "model.tar.gz"
        _download(url, archive_path, timeout=timeout, max_bytes=max_bytes)
        unpacked = Path(work) / "model"
        try:
            with tarfile.open(archive_path, "r:*") as archive:
                _check_members(archive, url)
                archive.extractall(unpacked, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, FetchError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")
            raise FetchError(f"{url}: not a readable tar archive ({first})") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(unpacked, dest)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the fetch; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m modelserver.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http(s) or file URL of the model folder as .tar.gz")
    parser.add_argument("--dest", required=True, help="folder to create (the server's --model_base_path)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest archive accepted")
    args = parser.parse_args(argv)
    if not (args.timeout > 0 and args.max_bytes > 0):
        parser.error("--timeout and --max-bytes must be positive")
    try:
        fetched = fetch_model(args.url, args.dest, timeout=args.timeout, max_bytes=args.max_bytes)
    except FetchError as exc:
        print(f"fetch: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"fetch: {'unpacked ' + args.url + ' into' if fetched else 'kept the model already in'} {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
