"""Label Studio's webhook events and project keys: which events train, how many labels an event carries.

LS sends one webhook per saved annotation inside the annotator's own request (1 s timeout, no retry), so the web
app only reads the event here, updates the project's task list (``tasklist``: tasks created or deleted) and
enqueues; everything else happens in the worker. Annotation events do not touch the task list: every reader of it
syncs first, and the sync reads the labelled tasks from LS (annotations are the truth, and a lost webhook must
not leave a task labelled or unlabelled for good).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

#: events that change the labels (skips and empty results are not labels)
TRAIN_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED"})
#: the model card's "Start Training"
FORCE_TRAINING = "START_TRAINING"
#: new tasks imported into the project: score them with the current version
TASKS_CREATED = "TASKS_CREATED"
#: tasks deleted in LS: forget them in the task list (no job)
TASKS_DELETED = "TASKS_DELETED"
HANDLED_EVENTS = TRAIN_EVENTS | {FORCE_TRAINING, TASKS_CREATED, TASKS_DELETED}
#: LS ids are database integers (64-bit at most); anything larger is not a project and would make a file name
#: longer than the file system allows
MAX_ID = 2**63 - 1


class BadEvent(ValueError):
    """A webhook payload that cannot be acted on; the message says why (answered with 400)."""


@dataclass
class WebhookEvent:
    action: str
    project_id: int | None = None
    labels: int = 0
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: ids of the annotations the event reports as labels: the training waits until LS lists them
    annotation_ids: list[int] = field(default_factory=list)

    @property
    def handled(self) -> bool:
        return self.action in HANDLED_EVENTS

    @property
    def forces_training(self) -> bool:
        return self.action == FORCE_TRAINING

    @property
    def creates_tasks(self) -> bool:
        return self.action == TASKS_CREATED

    @property
    def deletes_tasks(self) -> bool:
        return self.action == TASKS_DELETED


def valid_id(value: Any) -> int | None:
    """``value`` if it is an id LS can have (a positive 64-bit int, not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    return None


def project_id_of_key(key: Any) -> int | None:
    """The project id of LS's project key ``"<id>.<created timestamp>"`` (or a bare id); None if it is not one.

    Only ASCII digits count: ``str.isdigit`` accepts "²", which ``int`` then refuses.
    """
    head = str(key).split(".", 1)[0]
    if not (head.isascii() and head.isdigit()) or len(head) > 19:
        return None
    return valid_id(int(head))


def parse_event(payload: Any) -> WebhookEvent:
    """Read a webhook payload; raises :class:`BadEvent` for one that is not an LS event we can act on."""
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise BadEvent("expected a JSON object with an 'action'")
    event = WebhookEvent(payload["action"])
    if not event.handled:
        return event
    event.project_id = _project_id(payload)
    if event.creates_tasks or event.deletes_tasks:
        tasks = payload.get("tasks")
        event.tasks = [t for t in tasks if isinstance(t, dict)] if isinstance(tasks, list) else []
    if event.project_id is None and not event.deletes_tasks:
        # "delete all tasks" sends TASKS_DELETED without a project: the next sync of the task list finds it
        raise BadEvent(f"{event.action}: payload has no project id")
    if event.action == "ANNOTATIONS_DELETED":  # the label set changed: at least one, whatever the payload lists
        deleted = payload.get("annotations")
        event.labels = max(1, len(deleted) if isinstance(deleted, list) else 1)
    elif not (event.creates_tasks or event.deletes_tasks or event.forces_training):
        labels = _label_annotations(payload)
        event.labels = len(labels)
        event.annotation_ids = [i for a in labels if (i := valid_id(a.get("id"))) is not None]
    return event


def _label_annotations(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The annotations of an ANNOTATION(S)_CREATED/UPDATED payload that are labels: skips (was_cancelled) and
    empty results are not."""
    annotations = payload.get("annotation")
    annotations = annotations if isinstance(annotations, list) else [annotations]
    return [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")]


def _project_id(payload: dict[str, Any]) -> int | None:
    project = payload.get("project")
    if isinstance(project, dict):
        return valid_id(project.get("id"))
    if project is not None:
        return valid_id(project)
    annotation = payload.get("annotation")
    if isinstance(annotation, dict):
        return valid_id(annotation.get("project"))
    return None


def webhook_headers(basic_auth_user: str | None, basic_auth_pass: str | None, secret: str | None) -> dict[str, str]:
    """The headers LS's webhook to this backend must send ({} when /webhook is open).

    LS auto-creates that webhook without headers (so without auth); the backend adds these to it itself. The
    webhook secret is preferred to the Basic credentials: it opens /webhook only, not every route.
    """
    if secret:
        return {"Authorization": f"Bearer {secret}"}
    if basic_auth_user and basic_auth_pass:
        token = base64.b64encode(f"{basic_auth_user}:{basic_auth_pass}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}
