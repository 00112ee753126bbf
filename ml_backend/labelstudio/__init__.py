"""Everything about Label Studio, and the only package that imports label_studio_sdk.

- ``client``: the API client (projects, tasks, predictions, files, tokens).
- ``labelconfig``: label config XML -> the task schema (``tasktypes``).
- ``annotations``: annotations -> training labels (latest non-skipped annotation, unknown labels).
- ``webhooks``: which events train, labels per event, project keys.
"""
