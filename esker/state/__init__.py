"""Layer 2, hub state in the state directory: one SQLite helper and the stores on it (ledger, courses, keys)."""
