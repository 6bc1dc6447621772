"""Integration tests of the conformance checker: real processes and servers on loopback.

``control_plane`` (turbok's embedded control plane, ``turbok serve`` on loopback)
comes from tests/conftest.py; the cluster doubles from tests/doubles.
"""
