"""ECRL: a learned controller for GPU inference on small Kubernetes clusters.

The core library holds no servers: state/action schema, the digital twin, policies,
RL training, the experiment harness and the `ecrl` CLI.
"""

__version__ = "0.1.0"
