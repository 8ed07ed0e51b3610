"""Training components: engine set-up, schedule, checkpoints, metrics, the step."""
