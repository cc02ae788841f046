"""The run's glue: the config composed once and checked, the task registry, the federation built
for Flower's simulation and for a deployment, summary.json and W&B, resume, the offline commands."""
