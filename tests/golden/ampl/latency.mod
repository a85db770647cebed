# Model file: the `latency` formulation (placement's, plus M/M/1 waiting per instance and a utilisation ceiling).
# Rendered by solver/render.py from templates/ampl/latency.mod.j2 for 3 request groups on 3 nodes.
# Written in the part of AMPL that GNU MathProg also reads (glpsol solves these very files). The convex
# waiting window * rho^2 / (1 - rho) of each instance is replaced by the largest of its tangents at the
# utilisations in TANGENTS: a piecewise-linear outer approximation (below it everywhere), so this MILP's
# optimum is a lower bound of the true one; solver/check.py values the answer exactly.

set NODES;                                   # edge and cloud nodes
set MODELS;                                  # inference models
param G integer >= 0;                        # number of request groups (model, zone)
set GROUPS := 1..G;
set DEPLOYED within {MODELS, NODES};         # instances running already: kept, memory already used
param T integer >= 1;                        # number of tangent points
set TANGENTS := 1..T;

param model_of {GROUPS} symbolic in MODELS;  # the model a group's requests ask for
param group_size {GROUPS} integer >= 0;      # requests of the group in the window
param rtt {GROUPS, NODES} >= 0;              # round-trip time of the group's clients to each node (s)
param exec_time {MODELS, NODES} >= 0;        # service time of a model on a node at low load (s)
param mem {MODELS} >= 0;                     # memory per instance (KB)
param cpu {MODELS} >= 0;                     # computing per request (cores)
param mem_cap {NODES} >= 0;                  # memory the solver may use on a node (KB)
param cpu_cap {NODES} >= 0;                  # computing the solver may use on a node (cores)
param cost_request {NODES} >= 0;             # objective seconds added per request served on a node
param cost_hour {NODES} >= 0;                # objective seconds per instance-hour on a node
param window > 0;                            # seconds the group sizes were counted over
param max_util > 0, < 1;                     # utilisation ceiling of every instance
param rho {TANGENTS} >= 0, < 1;              # tangent points (utilisation)

var y {MODELS, NODES} binary;                        # model instance on node
var x {g in GROUPS, j in NODES} integer >= 0, <= group_size[g];   # a group's requests sent to node j
var wait {MODELS, NODES} >= 0;                       # summed waiting of the instance's requests (s)

minimize latency:
    sum {g in GROUPS, j in NODES} x[g,j] * (rtt[g,j] + exec_time[model_of[g],j] + cost_request[j])
  + sum {m in MODELS, j in NODES} (wait[m,j] + cost_hour[j] * window / 3600 * y[m,j]);

subject to demand {g in GROUPS}:
    sum {j in NODES} x[g,j] = group_size[g];

subject to link {g in GROUPS, j in NODES}:
    x[g,j] <= group_size[g] * y[model_of[g],j];

subject to keep {(m,j) in DEPLOYED}:
    y[m,j] = 1;

subject to memory {j in NODES}:
    sum {m in MODELS: (m,j) not in DEPLOYED} mem[m] * y[m,j] <= mem_cap[j];

subject to compute {j in NODES}:
    sum {g in GROUPS} cpu[model_of[g]] * x[g,j] <= cpu_cap[j];

subject to ceiling {m in MODELS, j in NODES: exec_time[m,j] > 0}:
    sum {g in GROUPS: model_of[g] = m} x[g,j] <= floor(max_util * window / exec_time[m,j] + 1e-9) * y[m,j];

subject to tangent {m in MODELS, j in NODES, k in TANGENTS: exec_time[m,j] > 0}:
    wait[m,j] >= window * rho[k] * rho[k] / (1 - rho[k])
               + exec_time[m,j] * rho[k] * (2 - rho[k]) / (1 - rho[k]) ** 2
                 * (sum {g in GROUPS: model_of[g] = m} x[g,j] - rho[k] * window / exec_time[m,j]);
