"""Unit tests of turbok.conformance: catalog, validator, checks against cluster doubles, runner, reports, CLI."""
