"""The testbed: a real Kubernetes control plane with emulated GPU nodes (see cluster.py)."""
