"""`python -m modelserver --host ADDR --rest_api_port PORT --model_name NAME --model_base_path DIR`

TF Serving's flag names (one model per process), so the local cluster and Kubernetes start the same
command line. Answers `GET /v1/models/NAME` with 200 once the model is loaded; exits 0 on SIGTERM.
Exit statuses: 2 for a bad flag value (one plain line on stderr: a port outside 0..65535, a thread
count, body limit or timeout that is negative, zero, NaN, infinite or absurdly large), 1 when it
cannot start (port taken, model base path missing or unusable: one JSON log line), 3 when the
model files cannot be loaded.
"""
from __future__ import annotations

import time

_STARTED = time.monotonic()

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

__all__ = ["main", "build_parser"]


MAX_BODY_LIMIT = 2 * 1024 ** 3      # a larger --max_body_bytes is a typo (and a memory hazard)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        """One line on stderr (no usage dump), exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _number(kind, low: float, high: float):
    """An argparse type: a finite `kind` from low to high (NaN and inf refused)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (TF Serving's flag names, plus a few of our own)."""
    parser = _Parser(
        prog="python -m modelserver",
        description="A local stand-in for TensorFlow Serving's REST API, on ONNX Runtime.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--rest_api_port", type=_number(int, 0, 65535), default=8501,
                        help="REST port (default 8501; 0 picks a free one, logged in the 'ready' line)")
    parser.add_argument("--model_name", required=True, help="the name clients use in /v1/models/NAME")
    parser.add_argument("--model_base_path", required=True,
                        help="folder holding <version>/model.onnx and an optional labels.json")
    parser.add_argument("--model_version_policy", choices=["all", "latest"], default="all",
                        help="serve every version found (default) or only the highest")
    parser.add_argument("--rest_api_num_threads", type=_number(int, 1, 1024), default=4,
                        help="request threads (default 4, 1..1024)")
    parser.add_argument("--max_concurrent_inferences", type=_number(int, 0, 1024), default=0,
                        help="inference calls run at once; the others wait their turn, first come first "
                             "served (default 0: as many as request threads). The local cluster sets it to "
                             "a CPU-limited node's whole cores (at least 1)")
    parser.add_argument("--inference_cgroup", metavar="DIR", default=None,
                        help="run inference on threads of its own that join this cgroup (v1 `tasks`, v2 "
                             "`cgroup.threads`), so that a CPU limit set there applies to inference alone "
                             "and not to the threads that accept and answer connections; the server does "
                             "not start when they cannot join. The local cluster sets it on a CPU-limited node")
    parser.add_argument("--max_body_bytes", type=_number(int, 1, MAX_BODY_LIMIT), default=32 * 1024 * 1024,
                        help="largest request body accepted (default 32 MiB, at most 2 GiB)")
    parser.add_argument("--graceful_timeout", type=_number(float, 0, 3600), default=5.0,
                        help="seconds in-flight requests get after SIGTERM (default 5, 0..3600)")
    parser.add_argument("--access_log", action="store_true", help="log every request (JSON, stderr)")
    parser.add_argument("--log_level", choices=["debug", "info", "warning", "error"], default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, bind, load the model, and serve until SIGTERM."""
    args = build_parser().parse_args(argv)
    from common.logs import setup_logging

    log = setup_logging("modelserver", level=args.log_level)

    def fail(message: str) -> int:
        log.error(message, extra={"fields": {"event": "startup_failed", "model": args.model_name}})
        return 1

    if not 0 <= args.rest_api_port <= 65535:
        return fail(f"--rest_api_port must be within 0..65535, got {args.rest_api_port}")
    if args.rest_api_num_threads < 1:
        return fail("--rest_api_num_threads must be at least 1")
    if args.inference_cgroup:
        from .inference import cgroup_tasks_file

        if not cgroup_tasks_file(Path(args.inference_cgroup)).is_file():
            return fail(f"--inference_cgroup {args.inference_cgroup} is not a cgroup (no tasks or cgroup.threads file)")
    from .server import bind_socket

    try:
        sock = bind_socket(args.host, args.rest_api_port)
    except OSError as exc:
        return fail(f"cannot bind {args.host}:{args.rest_api_port}: {exc.strerror or exc}")
    port = sock.getsockname()[1]

    from .layout import LoadError, scan_layout

    base_path = Path(args.model_base_path)
    try:
        layout = scan_layout(name=args.model_name, base_path=base_path, version_policy=args.model_version_policy)
    except LoadError as exc:
        sock.close()
        return fail(str(exc))

    def load_app():
        """Load the sessions (in the worker) and build the WSGI app; exit 3 when that fails."""
        from .app import ModelServerApp
        from .memory import tune_malloc
        from .repository import load_repository

        tune_malloc()       # in the worker, before its request threads exist

        loading = time.monotonic()
        try:
            repository = load_repository(name=args.model_name, base_path=base_path,
                                         version_policy=args.model_version_policy)
        except LoadError as exc:
            fail(str(exc))
            sys.exit(3)  # gunicorn's "worker failed to boot": the master stops too
        log.info("model loaded", extra={"fields": {
            "event": "loaded", "model": args.model_name, "base_path": str(base_path),
            "versions": sorted(repository.servables), "labels": repository.labels,
            "seconds": round(time.monotonic() - loading, 4)}})
        inference = None
        if args.inference_cgroup:
            from .inference import InferenceThreads
            try:
                inference = InferenceThreads(args.max_concurrent_inferences or args.rest_api_num_threads,
                                             Path(args.inference_cgroup))
            except OSError as exc:
                fail(exc.strerror or str(exc))
                sys.exit(3)
        return ModelServerApp(repository, max_body=args.max_body_bytes,
                              max_concurrent=args.max_concurrent_inferences or None, inference=inference)

    def post_worker_init(_worker) -> None:
        log.info("ready", extra={"fields": {
            "event": "ready", "model": args.model_name, "host": args.host, "port": port,
            "versions": list(layout.versions),
            "seconds_since_start": round(time.monotonic() - _STARTED, 4)}})

    from .server import GunicornServer, ServerSettings

    settings = ServerSettings(threads=args.rest_api_num_threads, graceful_timeout=args.graceful_timeout,
                              access_log=args.access_log, log_level=args.log_level,
                              proc_name=f"modelserver:{args.model_name}:{port}")
    GunicornServer(load_app, sock=sock, settings=settings, post_worker_init=post_worker_init).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
