"""The executor: the one place that changes the cluster (descheduler's convention).

It alone enforces the limits and dry-run: at most `max_deletions` deletions a run (the policy's
order decides which survive the cap), and with `dry_run` it only renders what it would do. Actions
run concurrently on a thread pool; on one node, a provision that does not fit in the memory the
node has now waits until that node's deletions are done, so memory is freed before it is needed.
Every action goes through the idempotent Cluster port (`deploy`, `remove`), so a run killed half
way is repaired by the next one. Each action is timed; the wall time of the whole step is the
provisioning latency the thesis measures (Tables 6.4 and 6.5: solver time excluded).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from cluster.catalog import Catalog
from cluster.port import Cluster, ClusterError

from .plan import DELETE, PROVISION, Action

__all__ = ["ExecSettings", "ActionResult", "ApplyResult", "execute", "cap_deletions", "render_dry_run"]


@dataclass(frozen=True)
class ExecSettings:
    """How actions are carried out."""

    max_deletions: int = 3          # deletions allowed per run; the rest wait for the next run
    concurrency: int = 8            # worker threads; 1 applies the actions one after another
    wait_ready: bool = False        # a provision completes once the instance answers, not once started
    ready_timeout: float = 120.0    # seconds a provision may wait for readiness
    dry_run: bool = False           # select and render, change nothing

    def __post_init__(self) -> None:
        if self.max_deletions < 0 or self.concurrency < 1 or self.ready_timeout <= 0:
            raise ValueError("max_deletions >= 0, concurrency >= 1 and ready_timeout > 0 required")


@dataclass
class ActionResult:
    """What happened to one action. Times in seconds; `start` is relative to the step's start."""

    action: Action
    ok: bool
    seconds: float = 0.0
    start: float = 0.0
    error: str | None = None
    skipped: str | None = None      # why it was not attempted (cap, dry run, stop)
    waited_for_memory: bool = False

    def to_dict(self) -> dict:
        out = {**self.action.to_dict(), "ok": self.ok, "ms": round(self.seconds * 1000, 3),
               "start_ms": round(self.start * 1000, 3)}
        if self.waited_for_memory:
            out["waited_for_deletions"] = True
        if self.error:
            out["error"] = self.error
        if self.skipped:
            out["skipped"] = self.skipped
        return out


@dataclass
class ApplyResult:
    results: list[ActionResult] = field(default_factory=list)
    seconds: float = 0.0            # wall time of the whole step: the provisioning latency

    @property
    def errors(self) -> list[str]:
        return [f"{r.action.kind} {r.action.model} on {r.action.node}: {r.error}" for r in self.results if r.error]

    def done(self, kind: str) -> list[Action]:
        return [r.action for r in self.results if r.ok and not r.skipped and r.action.kind == kind]


def cap_deletions(actions: list[Action], max_deletions: int) -> tuple[list[Action], list[Action]]:
    """Return (actions to run, deletions held back by the cap), keeping the policy's order."""
    run: list[Action] = []
    held: list[Action] = []
    deletions = 0
    for action in actions:
        if action.kind == DELETE:
            if deletions >= max_deletions:
                held.append(action)
                continue
            deletions += 1
        run.append(action)
    return run, held


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, ClusterError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def execute(actions: list[Action], *, cluster: Cluster | None, settings: ExecSettings,
            available: dict[str, int], model_memory: dict[str, int],
            stop: threading.Event | None = None) -> ApplyResult:
    """Carry out `actions` (capped; nothing at all with dry_run) and time each one.

    `available` is each node's free memory in KB as last observed, `model_memory` each model's KB
    per instance: a provision that does not fit waits for its node's deletions."""
    run, held = cap_deletions(actions, settings.max_deletions)
    cap_note = f"over the --max-deletions cap of {settings.max_deletions}"
    if settings.dry_run or cluster is None:
        results = [ActionResult(a, ok=True, skipped="dry run") for a in run]
        results += [ActionResult(a, ok=False, skipped=cap_note) for a in held]
        return ApplyResult(results=results, seconds=0.0)

    began = time.perf_counter()
    results: dict[int, ActionResult] = {}
    order = {id(a): i for i, a in enumerate(run)}

    def perform(action: Action, waited: bool) -> ActionResult:
        start = time.perf_counter()
        result = ActionResult(action, ok=False, start=start - began, waited_for_memory=waited)
        if stop is not None and stop.is_set():
            result.skipped = "stopped before it started"
            return result
        try:
            if action.kind == PROVISION:
                cluster.deploy(action.model, action.node, wait=settings.wait_ready,
                               timeout=settings.ready_timeout)
            else:
                cluster.remove(action.model, action.node)
            result.ok = True
        except Exception as exc:  # every failure is reported per action; the run goes on
            result.error = _describe(exc)
        result.seconds = time.perf_counter() - start
        return result

    # Which provisions must wait for their node's deletions to free memory.
    free = dict(available)
    deletions_on: dict[str, int] = {}
    for a in run:
        if a.kind == DELETE:
            deletions_on[a.node] = deletions_on.get(a.node, 0) + 1
    immediate: list[Action] = []
    waiting: dict[str, list[Action]] = {}
    for a in run:
        if a.kind == DELETE:
            immediate.append(a)
    for a in run:
        if a.kind != PROVISION:
            continue
        need = model_memory.get(a.model, 0)
        if deletions_on.get(a.node) and need > free.get(a.node, 0):
            waiting.setdefault(a.node, []).append(a)
        else:
            free[a.node] = free.get(a.node, 0) - need
            immediate.append(a)

    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="backend-apply") as pool:
        pending: dict[Future, Action] = {pool.submit(perform, a, False): a for a in immediate}
        remaining = dict(deletions_on)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                action = pending.pop(future)
                results[order[id(action)]] = future.result()
                if action.kind == DELETE:
                    remaining[action.node] -= 1
                    if remaining[action.node] == 0:
                        for queued in waiting.pop(action.node, []):
                            pending[pool.submit(perform, queued, True)] = queued
    ordered = [results[i] for i in sorted(results)]
    ordered += [ActionResult(a, ok=False, skipped=cap_note) for a in held]
    return ApplyResult(results=ordered, seconds=time.perf_counter() - began)


def render_dry_run(actions: list[Action], held: list[Action], *, catalog: Catalog, namespace: str | None = None,
                   render: Any = None) -> str:
    """Return the plan as YAML comments followed by the rendered Deployment/Service of each provision."""
    try:
        from cluster import k8s_render
    except ImportError:          # the renderer is optional for the local cluster
        k8s_render = None
    lines = [f"# dry run: {len(actions)} action(s), nothing changed"]
    for a in actions:
        lines.append(f"# {a.kind} {a.model} on {a.node}: {a.reason}")
    for a in held:
        lines.append(f"# held back by the deletion cap: delete {a.model} on {a.node}")
    docs: list[str] = []
    for a in actions:
        if k8s_render is None:
            continue
        if a.kind == PROVISION and a.model in catalog:
            from cluster.k8s_settings import render_settings_from

            settings = render_settings_from(render if render is not None else {}, namespace=namespace)
            rendered = k8s_render.render_instance(catalog[a.model], a.node, settings)
            docs.append(f"# provision {a.model} on {a.node}\n" + rendered.text.rstrip("\n"))
        elif a.kind == DELETE:
            lines.append(f"# delete means: Deployment and Service {k8s_render.object_name(a.model, a.node)} are removed")
    text = "\n".join(lines)
    if docs:
        text += "\n---\n" + "\n---\n".join(docs)
    return text + "\n"
