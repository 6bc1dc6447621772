"""turbok: a home for AI workloads on one machine and on Kubernetes.

Three parts share one API: agent sandboxes (``turbok.controllers``,
``turbok.runtime``, ``turbok.sandboxd``), multi-tier checkpointing
(``turbok.checkpoint``) and AI conformance (``turbok.conformance``,
``turbok.upgrade``). ``docs/architecture.md`` draws the map.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
