"""Tests of the shim: the Runtime contract (local and over gRPC), the supervisor, live restore."""

import pytest

# The contract suite lives outside test_*.py files: give it pytest's assertion messages too.
pytest.register_assert_rewrite("tests.shim.contract")
