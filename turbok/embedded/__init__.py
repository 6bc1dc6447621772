"""The embedded engine: turbok's control plane on one machine.

Owns: assembling the store, the API server, the router, the controllers and
the local runtime into one process (``controlplane``), and running that
process in the background for ``turbok up``/``down``/``status`` (``daemon``),
the controllers' client over the in-process registry (``client``), the
router's resolver (``resolver``), the stall metrics of the one event loop
they all share (``loopwatch``), the one-control-plane-per-home lock (``lock``)
and the ports kept across restarts (``ports``).
This is the composition root: the only place that knows every part.
"""
