"""Fault campaigns: faults injected into live runs on real processes and servers, judged from
what the runs recorded (``worldlm chaos``, ``benchmarks/faults.py``).

One module per scenario family (``kill``, ``churn``, ``bad_input``, ``restarts``), each a
pure judge of its observations and a shell that makes them; ``fleet`` and ``watch`` are the
shared shell (participant processes, the run's events and metrics), ``garbage`` makes bad
input, ``verdict`` is the table, ``campaign`` runs the chosen scenarios in turn.
"""
