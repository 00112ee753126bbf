"""Learning: scoring, the pool order, training and promotion, model versions. No HTTP, no rq, no Label Studio.

- ``service``: per-project state and scoring (the one path behind /predict, pool re-scores and new tasks).
- ``ranking``: a version's probabilities -> uncertainty -> the batch-aware pool order (``core.selection``).
- ``training``: train, evaluate fairly, decide promotion, publish (the worker's step; the simulator shares it).
- ``registry``: versions on disk and the current pointer.  ``embcache``: embeddings cached by content.
"""
