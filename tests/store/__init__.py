"""The store contract suite and backend-specific checks."""
