"""Background work on Redis + rq: training, pool re-scoring and scoring of new tasks.

``queue`` is what the web process uses (enqueue, coalesce, report status; no torch). ``tasks`` holds the job
functions the worker runs; ``context`` builds the per-process objects they share.
"""
