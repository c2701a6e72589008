"""Tools for a developer's machine: `make run` (local_run) and `make demo` (demo, demo_stack)."""
