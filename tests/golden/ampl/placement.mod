# Model file: the `placement` formulation (memory charged once per model instance).
# Rendered by solver/render.py from templates/ampl/placement.mod.j2 for 3 request groups on 3 nodes.
# Written in the part of AMPL that GNU MathProg also reads (glpsol solves these very files).

set NODES;                                   # edge nodes
set MODELS;                                  # inference models
param G integer >= 0;                        # number of request groups (model, zone)
set GROUPS := 1..G;
set DEPLOYED within {MODELS, NODES};         # instances running already: kept, memory already used

param model_of {GROUPS} symbolic in MODELS;  # the model a group's requests ask for
param group_size {GROUPS} integer >= 0;      # identical requests in the group (not `count`: an AMPL operator)
param rtt {GROUPS, NODES} >= 0;              # round-trip time of the group's clients to each node (s)
param exec_time {MODELS, NODES} >= 0;        # execution time of a model on a node (s)
param mem {MODELS} >= 0;                     # memory per instance (KB)
param cpu {MODELS} >= 0;                     # computing per request (cores)
param mem_cap {NODES} >= 0;                  # memory the solver may use on a node (KB)
param cpu_cap {NODES} >= 0;                  # computing the solver may use on a node (cores)

var y {MODELS, NODES} binary;                        # model instance on node
var x {g in GROUPS, j in NODES} integer >= 0, <= group_size[g];   # a group's requests sent to node j

minimize latency:
    sum {g in GROUPS, j in NODES} x[g,j] * (rtt[g,j] + exec_time[model_of[g],j]);

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
