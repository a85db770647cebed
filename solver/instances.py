"""Random problem instances: thesis Table 6.1's simulation world, and small random ones for tests.

Table 6.1 fixes the number of requests (25), nodes (10) and models (4), the execution time
(U(0.1, 0.8) s), the round-trip time (U(0.1, 0.5) s per request and node) and each node's RAM:
U(10,000, 500,000) KB available in Mode 1, U(30,000, 800,000) KB total in Mode 2.

Execution time is drawn per request and node, as chapter 3 indexes it (theta[i,j], "execution
time of r_i's inference job on s_j"). Only that reproduces the thesis's figures: iterative
search then costs 0.67-0.70 s per request and the optimum 0.40 s (the thesis: 0.68-0.70 and
0.37-0.40, a 41% gain), whereas one execution time per (model, node) gives a gain of only 31%.
The problem file keys execution time by model, so each request is written as a request for its
own model entry `m2.r17` carrying model m2's memory and cpu: in the thesis formulation (memory
charged per request) that is exactly the same problem. `exec_per="model"` draws one execution
time per (model, node) instead.

Table 6.1 leaves out model memory, model cpu and node cpu; the choices here are:
- model memory 10,000, 20,000, 30,000, 40,000 KB (charged per request, so a node's RAM holds
  0 to 50 requests and the capacities bind on the smaller nodes);
- cpu 0.1, 0.2, 0.3, 0.4 cores per request and 4 cores per node (a Jetson Nano has 4 cores).

Each request draws its model uniformly. The world is drawn once per seed for the largest sweep
(50 requests, 20 nodes); smaller instances are its prefixes, so when one parameter varies every
other value stays the same, as the thesis's simulation held them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver.problem import ModelReq, NodeCap, Problem, RequestGroup

MODEL_MEMORY_KB = (10_000, 20_000, 30_000, 40_000)
MODEL_CPU = (0.1, 0.2, 0.3, 0.4)
NODE_CPU = 4.0
EXEC_RANGE = (0.1, 0.8)
RTT_RANGE = (0.1, 0.5)
RAM_MODE1 = (10_000, 500_000)
RAM_MODE2 = (30_000, 800_000)


@dataclass(frozen=True)
class World:
    """Everything random in one simulation seed, drawn for the largest instance."""

    exec_request: np.ndarray   # (requests, nodes) execution time of each request on each node
    exec_model: np.ndarray     # (models, nodes) execution time per model, for exec_per="model"
    rtt: np.ndarray            # (requests, nodes)
    request_model: np.ndarray  # (requests,)
    ram_mode1: np.ndarray      # (nodes,) KB available
    ram_mode2: np.ndarray      # (nodes,) KB total


def draw_world(seed: int, *, max_requests: int = 50, max_nodes: int = 20, n_models: int = 4) -> World:
    """Draw the Table 6.1 world of one seed."""
    rng = np.random.default_rng(seed)
    return World(
        exec_request=rng.uniform(*EXEC_RANGE, size=(max_requests, max_nodes)),
        exec_model=rng.uniform(*EXEC_RANGE, size=(n_models, max_nodes)),
        rtt=rng.uniform(*RTT_RANGE, size=(max_requests, max_nodes)),
        request_model=rng.integers(0, n_models, size=max_requests),
        ram_mode1=rng.integers(RAM_MODE1[0], RAM_MODE1[1] + 1, size=max_nodes),
        ram_mode2=rng.integers(RAM_MODE2[0], RAM_MODE2[1] + 1, size=max_nodes),
    )


def thesis_problem(world: World, *, n_requests: int = 25, n_nodes: int = 10, mode: int = 1,
                   formulation: str = "thesis", exec_per: str = "request") -> Problem:
    """Return the instance with the first n_requests and n_nodes of a world, in Mode 1 or 2."""
    n_models = world.exec_model.shape[0]
    nodes = [f"s{j + 1}" for j in range(n_nodes)]
    base = [f"m{k + 1}" for k in range(n_models)]
    ram = world.ram_mode1 if mode == 1 else world.ram_mode2
    models: list[ModelReq] = []
    exec_time: dict[str, dict[str, float]] = {}
    requests: list[RequestGroup] = []
    if exec_per == "model":
        for k in range(n_models):
            models.append(ModelReq(name=base[k], memory=MODEL_MEMORY_KB[k % 4], cpu=MODEL_CPU[k % 4]))
            exec_time[base[k]] = {nodes[j]: float(world.exec_model[k, j]) for j in range(n_nodes)}
    for i in range(n_requests):
        k = int(world.request_model[i])
        name = base[k]
        if exec_per == "request":
            name = f"{base[k]}.r{i + 1}"
            models.append(ModelReq(name=name, memory=MODEL_MEMORY_KB[k % 4], cpu=MODEL_CPU[k % 4]))
            exec_time[name] = {nodes[j]: float(world.exec_request[i, j]) for j in range(n_nodes)}
        requests.append(RequestGroup(model=name, count=1, rtt={nodes[j]: float(world.rtt[i, j]) for j in range(n_nodes)}))
    return Problem(formulation=formulation,
                   nodes=[NodeCap(name=nodes[j], memory=int(ram[j]), cpu=NODE_CPU) for j in range(n_nodes)],
                   models=models, requests=requests, exec_time=exec_time)


def random_problem(seed: int, *, formulation: str = "thesis", n_groups: int = 4, n_nodes: int = 3,
                   n_models: int = 2, max_count: int = 2, tightness: float = 1.0,
                   deployed: int = 0) -> Problem:
    """Return a small random instance (tests: brute force, conformance); tighter with larger tightness."""
    rng = np.random.default_rng(seed)
    nodes = [f"n{j + 1}" for j in range(n_nodes)]
    models = [f"m{k + 1}" for k in range(n_models)]
    mem = rng.integers(1, 5, size=n_models) * 10_000
    cpu = np.round(rng.uniform(0.1, 1.0, size=n_models), 2)
    counts = rng.integers(1, max_count + 1, size=n_groups)
    group_model = rng.integers(0, n_models, size=n_groups)
    # capacities scaled so the whole demand needs roughly `tightness` of the cluster
    need_mem = float((mem[group_model] * counts).sum()) if formulation == "thesis" else float(mem.sum()) * 1.5
    need_cpu = float((cpu[group_model] * counts).sum())
    share = rng.uniform(0.5, 1.5, size=n_nodes)
    share /= share.sum()
    mem_cap = np.maximum(0, np.round(share * need_mem * 2.0 / tightness)).astype(int)
    cpu_cap = np.round(share * need_cpu * 2.0 / tightness, 2)
    pairs = []
    for _ in range(deployed):
        pair = (models[int(rng.integers(n_models))], nodes[int(rng.integers(n_nodes))])
        if pair not in pairs:
            pairs.append(pair)
    return Problem(
        formulation=formulation,
        nodes=[NodeCap(name=nodes[j], memory=int(mem_cap[j]), cpu=float(cpu_cap[j])) for j in range(n_nodes)],
        models=[ModelReq(name=models[k], memory=int(mem[k]), cpu=float(cpu[k])) for k in range(n_models)],
        requests=[RequestGroup(model=models[int(group_model[g])], count=int(counts[g]),
                               rtt={n: float(np.round(rng.uniform(0.01, 0.5), 3)) for n in nodes})
                  for g in range(n_groups)],
        exec_time={m: {n: float(np.round(rng.uniform(0.1, 0.8), 3)) for n in nodes} for m in models},
        deployed=pairs if formulation == "placement" else [],
    )


def zoned_problem(seed: int, *, n_nodes: int = 1000, n_models: int = 50, n_zones: int = 100,
                  n_requests: int = 100_000, load: float = 0.6) -> Problem:
    """Return a large `placement` instance: requests in (model, zone) groups on a geographic cluster.

    Zones and nodes lie in a unit square (nodes near zones, as edge sites are); RTT grows with
    distance (5 ms + 150 ms per unit, +-10% jitter); nodes differ in speed (x0.5..x2), memory
    (4-16 GB) and cores (4-16); models in base execution time (20-300 ms), memory (100 MB-1.5 GB)
    and cpu per request. Model popularity is Zipf-like; every (model, zone) group has requests.
    Total cpu demand is `load` times the cluster's cores, so capacity shapes the answer. The
    groups of one zone share one rtt mapping (cheap to build and to convert).
    """
    rng = np.random.default_rng(seed)
    zones_xy = rng.uniform(0, 1, size=(n_zones, 2))
    home = rng.integers(0, n_zones, size=n_nodes)
    nodes_xy = np.clip(zones_xy[home] + rng.normal(0, 0.05, size=(n_nodes, 2)), 0, 1)
    distance = np.linalg.norm(zones_xy[:, None, :] - nodes_xy[None, :, :], axis=2)
    rtt = (0.005 + 0.15 * distance) * rng.uniform(0.9, 1.1, size=distance.shape)
    speed = rng.uniform(0.5, 2.0, size=n_nodes)
    base_exec = rng.uniform(0.02, 0.3, size=n_models)
    exec_time = base_exec[:, None] / speed[None, :]
    popularity = 1.0 / np.arange(1, n_models + 1) ** 0.8
    rng.shuffle(popularity)
    weights = (popularity[:, None] * rng.uniform(0.5, 1.5, size=n_zones)[None, :]).ravel()
    counts = 1 + rng.multinomial(n_requests - n_models * n_zones, weights / weights.sum())
    node_cpu = rng.integers(4, 17, size=n_nodes).astype(float)
    model_cpu = rng.uniform(0.5, 1.5, size=n_models)
    demand = float((counts.reshape(n_models, n_zones).sum(axis=1) * model_cpu).sum())
    model_cpu *= load * node_cpu.sum() / demand
    node_names = [f"node-{j:04d}" for j in range(n_nodes)]
    model_names = [f"model-{k:02d}" for k in range(n_models)]
    zone_rtt = [{node_names[j]: float(rtt[z, j]) for j in range(n_nodes)} for z in range(n_zones)]
    return Problem(
        formulation="placement",
        nodes=[NodeCap(name=node_names[j], memory=int(rng.integers(4_000_000, 16_000_001)), cpu=float(node_cpu[j]))
               for j in range(n_nodes)],
        models=[ModelReq(name=model_names[k], memory=int(rng.integers(100_000, 1_500_001)),
                         cpu=float(round(model_cpu[k], 6))) for k in range(n_models)],
        requests=[RequestGroup(model=model_names[k], count=int(counts[k * n_zones + z]), rtt=zone_rtt[z])
                  for k in range(n_models) for z in range(n_zones)],
        exec_time={model_names[k]: {node_names[j]: float(exec_time[k, j]) for j in range(n_nodes)}
                   for k in range(n_models)},
    )


def latency_problem(seed: int, *, n_nodes: int = 1000, n_models: int = 50, n_zones: int = 100,
                    n_requests: int = 100_000, load: float = 0.3, max_utilisation: float = 0.85) -> Problem:
    """Return `zoned_problem` as a `latency` instance: the window is chosen so that the requests'
    summed service time is `load` x the window x the number of nodes (one instance per node busy
    `load` of the time, on average), so waiting matters and some instances reach the ceiling."""
    import dataclasses

    base = zoned_problem(seed, n_nodes=n_nodes, n_models=n_models, n_zones=n_zones, n_requests=n_requests)
    mean_exec = {m: float(np.mean(list(row.values()))) for m, row in base.exec_time.items()}
    service = sum(g.count * mean_exec[g.model] for g in base.requests)
    window = float(round(service / (load * n_nodes), 3))
    return dataclasses.replace(base, formulation="latency", window=window, max_utilisation=max_utilisation)
