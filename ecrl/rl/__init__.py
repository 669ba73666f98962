"""Reinforcement learning on the twin: environment, PPO, placement scoring and ONNX export."""
