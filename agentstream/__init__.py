"""agentstream: an event-sourced runtime for autonomous AI agents.

This package is the composition root: settings, backend wiring and the command line.
The runtime itself lives in `streams`, `handlers`, `projections` and `sandbox_jobs`.
"""

__version__ = "0.1.0"
