"""Training: the point-in-time dataset, the model, the registry and the rules baseline."""
