"""Measuring a DeploymentConfig: accuracy, MACs/FLOPs, latency, memory."""
