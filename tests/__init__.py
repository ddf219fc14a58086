"""The tests: pure layers first, then real-peer integration tests."""
