"""The HTTP layer: parse, validate, call the service or the queue, respond. Nothing else."""
