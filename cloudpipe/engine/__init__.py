"""Running models: configs, stages, the training loop, streaming inference, checkpoints, devices."""
