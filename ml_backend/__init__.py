"""Active-learning ML backend for Label Studio.

Layers (nothing imports upward):

- ``core``: pure numpy: acquisition functions, cold-start scores, metrics.
- ``models``: the only package that imports torch / transformers: encoders, MC-dropout head, training.
- ``labelconfig``: LS label config -> the task schema the models need.
- ``registry``: model versions on disk (atomic publish, current pointer), the single truth about versions.
- ``service``: per-project prediction (embed, MC passes, score) shared by the web app and the worker.
- ``lsclient``: the only code that talks to Label Studio.
- ``jobs``: rq jobs (train, rescore, score new tasks) and the coalescing queue.
- ``api``: the HTTP routes Label Studio calls.
"""

__version__ = "0.1.0"
