"""The edge testbed (project issue 9): clients at real distances from the nodes.

- `testbed.scenario`: the scenario file (nodes, client zones with their true RTTs, what the system
  is told, phases of load) loaded and validated into frozen dataclasses.
- `testbed.trace`: the seeded, deterministic arrival trace of a scenario.
- `testbed.clients`: the client emulator replaying that trace in real time against a front-end,
  with the zone -> node round-trip emulated in user space.

`python -m testbed check SCENARIO.yaml` validates a scenario and prints a summary.
"""
