"""Training: optimizer and schedules, the train state, the pure train step, checkpoints, the binary."""
