"""The storage tiers, fastest first: memory, local disk, peer agents, object storage.

Every tier implements one small interface, ``base.Tier`` (put, get, exists,
list, delete, commit), and passes ``turbok.checkpoint.testing.check_tier``.
The agent (agent.py) chains them; the restore planner (restore.py) reads from
whichever holds a verified copy.
"""

from turbok.checkpoint.tiers.base import PartState, Tier

__all__ = ["PartState", "Tier"]
