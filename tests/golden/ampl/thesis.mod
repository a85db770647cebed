# Model file: joint model provisioning and request dispatch, thesis chapter 3.
# Rendered by solver/render.py from templates/ampl/thesis.mod.j2 for 6 requests on 3 nodes.
# Written in the part of AMPL that GNU MathProg also reads (glpsol solves these very files).

set NODES;                                   # edge nodes s_j
set MODELS;                                  # inference models
param N integer >= 0;                        # number of requests
set REQ := 1..N;                             # requests r_i

param model_of {REQ} symbolic in MODELS;     # the model request r_i asks for
param rtt {REQ, NODES} >= 0;                 # tau[i,j]: round-trip time of r_i's client to s_j (s)
param exec_time {MODELS, NODES} >= 0;        # execution time of a model on s_j (s); theta[i,j] = exec_time[model_of[i],j]
param mem {MODELS} >= 0;                     # m_i: memory needed by a request's model (KB)
param cpu {MODELS} >= 0;                     # c_i: computing needed by a request's model (cores)
param mem_cap {NODES} >= 0;                  # M_j: memory available on s_j (KB)
param cpu_cap {NODES} >= 0;                  # C_j: computing available on s_j (cores)

var I {REQ, NODES} binary;                   # I[i,j] = 1 when r_i executes on s_j

minimize latency:
    sum {i in REQ, j in NODES} I[i,j] * (rtt[i,j] + exec_time[model_of[i],j]);

subject to memory {j in NODES}:
    sum {i in REQ} I[i,j] * mem[model_of[i]] <= mem_cap[j];

subject to compute {j in NODES}:
    sum {i in REQ} I[i,j] * cpu[model_of[i]] <= cpu_cap[j];

subject to select {i in REQ}:
    sum {j in NODES} I[i,j] >= 1;
