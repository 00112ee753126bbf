"""Label Studio label config -> the task schema our models need.

Supported: one control that a registered task type learns (today ``<Choices>``, single or ``choice="multiple"``)
attached to one ``<Text>``, ``<HyperText>`` or ``<Image>`` whose value comes from task data. Other controls may be
present (e.g. a comment box); only the learnable one is predicted.
"""

from __future__ import annotations

from typing import Literal

from label_studio_sdk.label_interface import LabelInterface

from ml_backend.tasktypes import TASK_TYPES, TaskSchema, for_control

SUPPORTED = (
    " or ".join(t.description for t in TASK_TYPES)
    + " on one <Text>, <HyperText> or <Image> object, with the object's value taken from task data ($key)"
)
_OBJECT_KINDS: dict[str, Literal["text", "image"]] = {"Text": "text", "HyperText": "text", "Image": "image"}


class UnsupportedConfig(ValueError):
    """The label config is valid for LS but not something this backend can learn; the message says why."""


def parse_label_config(config: str) -> TaskSchema:
    """Parse and check a label config; raises :class:`UnsupportedConfig` with what is supported."""
    if not isinstance(config, str) or not config.strip():
        raise UnsupportedConfig(f"empty label config; supported: {SUPPORTED}")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML/validation error types
        raise UnsupportedConfig(f"cannot parse the label config: {exc}") from exc
    learnable = [(c, t) for c in interface.controls if (t := for_control(c.tag, c.attr or {})) is not None]
    if len(learnable) != 1:
        found = sorted({c.tag for c in interface.controls}) or ["no controls"]
        raise UnsupportedConfig(
            f"found {len(learnable)} learnable controls ({', '.join(found)}); supported: {SUPPORTED}"
        )
    control, task = learnable[0]
    targets = list(control.to_name or [])
    objects = {o.name: o for o in interface.objects}
    if len(targets) != 1 or targets[0] not in objects:
        raise UnsupportedConfig(
            f"<{control.tag} name={control.name!r}> must point to exactly one object; supported: {SUPPORTED}"
        )
    obj = objects[targets[0]]
    if obj.tag not in _OBJECT_KINDS:
        raise UnsupportedConfig(f"<{control.tag}> on <{obj.tag}> is not supported; supported: {SUPPORTED}")
    value = obj.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise UnsupportedConfig(f"<{obj.tag} value={value!r}> must read task data with $key; supported: {SUPPORTED}")
    labels = tuple(control.labels or [])
    if len(labels) < 2:
        raise UnsupportedConfig(f"<{control.tag} name={control.name!r}> needs at least 2 labels, found {len(labels)}")
    return TaskSchema(
        task_type=task.name,
        kind=_OBJECT_KINDS[obj.tag],
        from_name=control.name,
        to_name=obj.name,
        object_tag=obj.tag,
        value_key=value[1:],
        labels=labels,
    )
