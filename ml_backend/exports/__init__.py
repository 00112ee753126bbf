"""Exports for teams that move data between tools: the queue's next tasks, the labelled tasks and the hard
examples of a project, as Label Studio JSON, Prodigy JSONL, CVAT XML or CSV."""
