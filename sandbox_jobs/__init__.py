"""Sandboxed jobs: job specs, launchers (local bubblewrap, Kubernetes) and result collection."""
