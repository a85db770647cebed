"""Build the Kubernetes control plane used by tests/k8s from Go modules, into a per-version cache.

Why this exists: the test suite runs the Kubernetes adapter against a real API server, but this
project may not download binaries or use a container engine. Everything is compiled from source
with the local Go toolchain and the Go module proxy:

- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl from `k8s.io/kubernetes`. Its
  go.mod replaces the staging modules (`k8s.io/api`, ...) with local paths, so `go install
  k8s.io/kubernetes/...@vX` is refused; a small generated wrapper module requires
  `k8s.io/kubernetes` and replaces every `k8s.io/<staging> v0.0.0` with the published
  `v0.<minor>.<patch>` (the list is read from the downloaded go.mod), then builds the commands
  with the version stamped in through -ldflags.
- etcd from `go.etcd.io/etcd/server/v3` through a three-line main calling `etcdmain.Main`.
- kwok (simulated kubelets) with `go install sigs.k8s.io/kwok/cmd/kwok@<version>`.
- metrics-server (serves metrics.k8s.io through the aggregator) with
  `go install sigs.k8s.io/metrics-server/cmd/metrics-server@<version>`.

Binaries land in `${XDG_CACHE_HOME:-~/.cache}/edge-inference/k8s/<kubernetes version>/bin`
(override with EDGE_K8S_CACHE); each has a stamp file naming the recipe it was built from, so only
the first run pays and a version bump rebuilds. Stdlib only: runs with any Python 3.11.

Usage: python tests/k8s/k8s_tools.py [--print-bin | --check] [--force] [--only NAME ...] [--missing-go-ok]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
METRICS_SERVER_VERSION = "v0.9.0"
GO_DIRECTIVE = "1.26.0"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBE_COMMANDS, "etcd", "kwok", "metrics-server")
RECIPE_REVISION = "1"   # bump when the way a binary is built changes


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and why."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def work(self) -> Path:
        return self.root / "work"


def cache_root() -> Path:
    """Return the versioned cache directory (EDGE_K8S_CACHE, else XDG_CACHE_HOME, else ~/.cache)."""
    explicit = os.environ.get("EDGE_K8S_CACHE")
    if explicit:
        return Path(explicit).expanduser() / KUBERNETES_VERSION
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edge-inference" / "k8s" / KUBERNETES_VERSION


def bin_dir() -> Path:
    """Return the directory the binaries are (or will be) installed in."""
    return Paths(cache_root()).bin


def find_go() -> str:
    """Return the path of the `go` command (EDGE_K8S_GO, PATH, /usr/local/go), or raise BuildError."""
    explicit = os.environ.get("EDGE_K8S_GO")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise BuildError(f"the Go toolchain is missing: EDGE_K8S_GO={explicit} is not an executable; "
                         "install Go >= 1.26 (https://go.dev/doc/install) to build the Kubernetes test control plane")
    found = shutil.which("go")
    if found:
        return found
    for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BuildError("the Go toolchain is missing: no `go` on PATH nor in /usr/local/go/bin; "
                     "install Go >= 1.26 (https://go.dev/doc/install) to build the Kubernetes test control plane")


def staging_replaces(kubernetes_gomod: str, version: str) -> list[tuple[str, str]]:
    """Return (module, published version) for every `=> ./staging/...` replace in kubernetes' go.mod."""
    minor_patch = version.lstrip("v").split(".", 1)[1]          # "1.36.3" -> "36.3"
    published = f"v0.{minor_patch}"
    modules = re.findall(r"^\s*(?:replace\s+)?(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/", kubernetes_gomod, re.M)
    if not modules:
        raise BuildError("no staging replaces found in k8s.io/kubernetes's go.mod: its layout changed")
    return [(module, published) for module in sorted(set(modules))]


def wrapper_gomod(replaces: list[tuple[str, str]]) -> str:
    """Return the go.mod text of the wrapper module that builds the kubernetes commands."""
    lines = ["module edgeinference/k8sbuild", "", f"go {GO_DIRECTIVE}", "",
             f"require k8s.io/kubernetes {KUBERNETES_VERSION}", "", "replace ("]
    lines += [f"\t{module} v0.0.0 => {module} {published}" for module, published in replaces]
    lines += [")", ""]
    return "\n".join(lines)


TOOLS_GO = """//go:build tools

// Package tools pins the commands built from k8s.io/kubernetes so `go mod tidy` keeps their deps.
package tools

import (
{imports}
)
"""

ETCD_MAIN = """// Command etcd is etcd's server built from its Go module.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def recipe_key(name: str) -> str:
    """Return the stamp text that identifies how binary `name` is built."""
    if name in KUBE_COMMANDS:
        version = f"kubernetes {KUBERNETES_VERSION}"
    elif name == "etcd":
        version = f"etcd {ETCD_VERSION}"
    elif name == "metrics-server":
        version = f"metrics-server {METRICS_SERVER_VERSION}"
    else:
        version = f"kwok {KWOK_VERSION}"
    digest = hashlib.sha256(f"{version} {RECIPE_REVISION} {GO_DIRECTIVE}".encode()).hexdigest()[:12]
    return f"{name} {version} recipe-{RECIPE_REVISION} {digest}\n"


def is_current(paths: Paths, name: str) -> bool:
    """Return True when bin/<name> exists and its stamp matches the current recipe."""
    binary, stamp = paths.bin / name, paths.bin / f".{name}.stamp"
    return binary.is_file() and os.access(binary, os.X_OK) and stamp.is_file() and stamp.read_text() == recipe_key(name)


def missing_binaries(paths: Paths | None = None) -> list[str]:
    """Return the names of the binaries that are not built (or were built from an older recipe)."""
    paths = paths or Paths(cache_root())
    return [name for name in ALL_BINARIES if not is_current(paths, name)]


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Progress:
    """Print a line per step and a heartbeat while a long command runs, so a build never looks hung."""

    def __init__(self, *, stream=sys.stderr, every: float = 20.0) -> None:
        self.stream, self.every, self.start = stream, every, time.monotonic()

    def say(self, message: str) -> None:
        """Print one progress line with the elapsed time."""
        elapsed = time.monotonic() - self.start
        print(f"[k8s-tools {int(elapsed) // 60:2d}m{int(elapsed) % 60:02d}s] {message}", file=self.stream, flush=True)

    def run(self, argv: list[str], *, cwd: Path, env: dict[str, str], what: str) -> str:
        """Run `argv`, counting the packages `go -v` reports; raise BuildError with its output tail."""
        self.say(f"{what}: {' '.join(argv[:3])} ...")
        started = time.monotonic()
        # Same process group as us (Ctrl-C and make's signals reach go too), and SIGKILL to go
        # when this script dies, so an interrupted build never keeps compiling in the background.
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, preexec_fn=_die_with_parent)
        lines: list[str] = []
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self.every):
                downloads = sum(1 for line in lines if line.startswith("go: downloading"))
                self.say(f"  {what}: {int(time.monotonic() - started)}s, {len(lines) - downloads} packages, "
                         f"{downloads} module downloads so far")

        ticker = threading.Thread(target=heartbeat, daemon=True)
        ticker.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
        if code != 0:
            tail = "\n".join(lines[-40:])
            raise BuildError(f"{what} failed (exit {code}) in {cwd}:\n{tail}")
        self.say(f"  {what}: done in {int(time.monotonic() - started)}s")
        return "\n".join(lines)


def go_env(go: str, paths: Paths) -> dict[str, str]:
    """Return the environment for go commands: static binaries, no VCS stamping, our go on PATH."""
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -buildvcs=false").strip()
    env["PATH"] = f"{Path(go).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("GOBIN", None)
    env.pop("GOOS", None)
    env.pop("GOARCH", None)
    return env


def install(paths: Paths, built: Path, names: list[str]) -> None:
    """Move freshly built binaries into bin/ and write their stamps (atomic per binary)."""
    paths.bin.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = built / name
        if not source.is_file():
            raise BuildError(f"the build did not produce {name}")
        os.replace(source, paths.bin / name)
        (paths.bin / f".{name}.stamp").write_text(recipe_key(name))


def build_kubernetes(go: str, paths: Paths, progress: Progress) -> None:
    """Build the four kubernetes commands through a generated wrapper module."""
    env = go_env(go, paths)
    work = paths.work / "kubernetes"
    work.mkdir(parents=True, exist_ok=True)
    out = progress.run([go, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                       cwd=work, env=env, what=f"download k8s.io/kubernetes {KUBERNETES_VERSION}")
    info = json.loads(out[out.index("{"):])
    if info.get("Error"):
        raise BuildError(f"go mod download k8s.io/kubernetes: {info['Error']}")
    replaces = staging_replaces(Path(info["GoMod"]).read_text(), KUBERNETES_VERSION)
    progress.say(f"wrapper module: {len(replaces)} staging modules pinned to {replaces[0][1]}")
    gomod = wrapper_gomod(replaces)
    marker = work / "go.mod.generated"            # tidy rewrites go.mod; this remembers what we generated
    if not (work / "go.mod").is_file() or not marker.is_file() or marker.read_text() != gomod:
        (work / "go.mod").write_text(gomod)
        (work / "go.sum").unlink(missing_ok=True)
        marker.write_text(gomod)
    (work / "tools").mkdir(exist_ok=True)
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{name}"' for name in KUBE_COMMANDS)
    (work / "tools" / "tools.go").write_text(TOOLS_GO.format(imports=imports))
    progress.run([go, "mod", "tidy"], cwd=work, env=env, what="go mod tidy (kubernetes wrapper)")
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    ldflags = " ".join(["-s -w",
                        f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
                        f"-X k8s.io/component-base/version.gitMajor={major}",
                        f"-X k8s.io/component-base/version.gitMinor={minor}",
                        "-X k8s.io/component-base/version.gitTreeState=clean"])
    with tempfile.TemporaryDirectory(dir=paths.root, prefix=".out-") as out_dir:
        progress.run([go, "build", "-v", "-trimpath", "-o", out_dir + "/", "-ldflags", ldflags,
                      *(f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_COMMANDS)],
                     cwd=work, env=env, what="compile kube-apiserver, kube-controller-manager, kube-scheduler, kubectl")
        install(paths, Path(out_dir), list(KUBE_COMMANDS))


def build_etcd(go: str, paths: Paths, progress: Progress) -> None:
    """Build etcd from go.etcd.io/etcd/server/v3 through a three-line main."""
    env = go_env(go, paths)
    work = paths.work / "etcd"
    work.mkdir(parents=True, exist_ok=True)
    gomod = f"module edgeinference/etcdbuild\n\ngo {GO_DIRECTIVE}\n\nrequire go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    (work / "go.mod").write_text(gomod)
    (work / "main.go").write_text(ETCD_MAIN)
    progress.run([go, "mod", "tidy"], cwd=work, env=env, what="go mod tidy (etcd wrapper)")
    with tempfile.TemporaryDirectory(dir=paths.root, prefix=".out-") as out_dir:
        progress.run([go, "build", "-v", "-trimpath", "-o", str(Path(out_dir) / "etcd"), "-ldflags", "-s -w", "."],
                     cwd=work, env=env, what=f"compile etcd {ETCD_VERSION}")
        install(paths, Path(out_dir), ["etcd"])


def go_install(go: str, paths: Paths, progress: Progress, name: str, package: str) -> None:
    """Build command `name` with `go install <package>@<version>` (a module without replaces)."""
    env = go_env(go, paths)
    with tempfile.TemporaryDirectory(dir=paths.root, prefix=".out-") as out_dir:
        env["GOBIN"] = out_dir
        progress.run([go, "install", "-v", "-trimpath", "-ldflags", "-s -w", package],
                     cwd=Path(out_dir), env=env, what=f"compile {package}")
        install(paths, Path(out_dir), [name])


def build_kwok(go: str, paths: Paths, progress: Progress) -> None:
    """Build kwok (the simulated kubelets)."""
    go_install(go, paths, progress, "kwok", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}")


def build_metrics_server(go: str, paths: Paths, progress: Progress) -> None:
    """Build metrics-server (metrics.k8s.io from the kubelets' /metrics/resource)."""
    go_install(go, paths, progress, "metrics-server",
               f"sigs.k8s.io/metrics-server/cmd/metrics-server@{METRICS_SERVER_VERSION}")


def build(*, force: bool = False, only: list[str] | None = None, progress: Progress | None = None) -> Path:
    """Build whatever is missing (or everything with force=True); return the bin directory."""
    progress = progress or Progress()
    paths = Paths(cache_root())
    wanted = list(only or ALL_BINARIES)
    todo = [name for name in wanted if force or not is_current(paths, name)]
    if not todo:
        progress.say(f"up to date: {paths.bin}")
        return paths.bin
    go = find_go()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.strip()
    paths.root.mkdir(parents=True, exist_ok=True)
    progress.say(f"building {', '.join(todo)} into {paths.bin} with {version} (first run only; ~10-15 min on 2 cores)")
    lock_path = paths.root / ".build.lock"
    import fcntl
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # concurrent `make test` runs build once
        todo = [name for name in todo if force or not is_current(paths, name)]
        if any(name in KUBE_COMMANDS for name in todo):
            build_kubernetes(go, paths, progress)
        if "etcd" in todo:
            build_etcd(go, paths, progress)
        if "kwok" in todo:
            build_kwok(go, paths, progress)
        if "metrics-server" in todo:
            build_metrics_server(go, paths, progress)
    progress.say(f"built into {paths.bin}")
    return paths.bin


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build the missing binaries, or print where they live."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # run finally blocks: kill go, drop temp dirs
    parser = argparse.ArgumentParser(prog="tests/k8s/k8s_tools.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--print-bin", action="store_true", help="print the bin directory and exit")
    parser.add_argument("--check", action="store_true", help="exit 1 (listing them) when binaries are missing")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--only", nargs="+", choices=ALL_BINARIES, help="build only these binaries")
    parser.add_argument("--missing-go-ok", action="store_true",
                        help="without a Go toolchain, warn and exit 0 (so `make run` works; tests/k8s then fail)")
    args = parser.parse_args(argv)
    if args.print_bin:
        print(bin_dir())
        return 0
    if args.check:
        missing = missing_binaries()
        if missing:
            print(f"missing in {bin_dir()}: {' '.join(missing)}", file=sys.stderr)
            return 1
        return 0
    if args.missing_go_ok and missing_binaries():
        try:
            find_go()
        except BuildError as exc:
            print(f"\n*** k8s-tools: WARNING: {exc}\n*** the tests in tests/k8s will FAIL until Go is installed "
                  "and `make k8s-tools` has run\n", file=sys.stderr)
            return 0
    try:
        build(force=args.force, only=args.only)
    except BuildError as exc:
        print(f"k8s-tools: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("k8s-tools: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
