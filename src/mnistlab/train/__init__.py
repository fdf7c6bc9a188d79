"""One training loop for in-memory tensors, evaluation, checkpoints, seeding and devices."""
