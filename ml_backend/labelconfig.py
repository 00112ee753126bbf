"""Label Studio label config -> the task schema our models need, and back to LS result JSON.

Supported: one ``<Choices>`` (single or ``choice="multiple"``) attached to one ``<Text>``, ``<HyperText>`` or
``<Image>``. Other controls may be present (e.g. a comment box); we predict only the Choices.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any, Literal

from label_studio_sdk.label_interface import LabelInterface

SUPPORTED = (
    'one <Choices> (single or choice="multiple") on one <Text>, <HyperText> or <Image> object, '
    "with the object's value taken from task data ($key)"
)
_OBJECT_KINDS: dict[str, Literal["text", "image"]] = {"Text": "text", "HyperText": "text", "Image": "image"}
_TAG_RE = re.compile(r"<[^>]+>")


class UnsupportedConfig(ValueError):
    """The label config is valid for LS but not something this backend can learn; the message says why."""


@dataclass(frozen=True)
class TaskSchema:
    kind: Literal["text", "image"]
    from_name: str
    to_name: str
    object_tag: str
    value_key: str
    labels: tuple[str, ...]
    multilabel: bool

    def task_input(self, data: dict[str, Any]) -> str:
        """The raw input of a task: the text itself, or the image URL; raises ValueError if unusable."""
        if not isinstance(data, dict) or self.value_key not in data:
            raise ValueError(f"task data has no {self.value_key!r} key (the config's {self.object_tag} reads ${self.value_key})")
        value = data[self.value_key]
        if not isinstance(value, str):
            raise ValueError(f"task data {self.value_key!r} must be a string, got {type(value).__name__}")
        if self.object_tag == "HyperText":
            value = html.unescape(_TAG_RE.sub(" ", value))
        value = value.strip()
        if not value:
            raise ValueError(f"task data {self.value_key!r} is empty")
        return value

    def make_result(self, chosen: list[str]) -> list[dict[str, Any]]:
        """LS prediction ``result`` choosing ``chosen`` (empty list = no pre-annotation)."""
        if not chosen:
            return []
        return [{"from_name": self.from_name, "to_name": self.to_name, "type": "choices", "value": {"choices": chosen}}]

    def labels_from_result(self, result: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """(known labels, unknown labels) chosen for our control in an annotation's ``result``."""
        chosen: list[str] = []
        for region in result or []:
            if isinstance(region, dict) and region.get("from_name") == self.from_name:
                chosen.extend((region.get("value") or {}).get("choices") or [])
        known = [c for c in chosen if c in self.labels]
        return known, [c for c in chosen if c not in self.labels]


def parse_label_config(config: str) -> TaskSchema:
    """Parse and check a label config; raises :class:`UnsupportedConfig` with what is supported."""
    if not isinstance(config, str) or not config.strip():
        raise UnsupportedConfig(f"empty label config; supported: {SUPPORTED}")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML/validation error types
        raise UnsupportedConfig(f"cannot parse the label config: {exc}") from exc
    choices = [c for c in interface.controls if c.tag == "Choices"]
    if len(choices) != 1:
        found = sorted({c.tag for c in interface.controls}) or ["no controls"]
        raise UnsupportedConfig(f"found {len(choices)} <Choices> controls ({', '.join(found)}); supported: {SUPPORTED}")
    control = choices[0]
    targets = list(control.to_name or [])
    objects = {o.name: o for o in interface.objects}
    if len(targets) != 1 or targets[0] not in objects:
        raise UnsupportedConfig(f"<Choices name={control.name!r}> must point to exactly one object; supported: {SUPPORTED}")
    obj = objects[targets[0]]
    if obj.tag not in _OBJECT_KINDS:
        raise UnsupportedConfig(f"<Choices> on <{obj.tag}> is not supported; supported: {SUPPORTED}")
    value = obj.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise UnsupportedConfig(f"<{obj.tag} value={value!r}> must read task data with $key; supported: {SUPPORTED}")
    labels = tuple(control.labels or [])
    if len(labels) < 2:
        raise UnsupportedConfig(f"<Choices name={control.name!r}> needs at least 2 <Choice> values, found {len(labels)}")
    return TaskSchema(
        kind=_OBJECT_KINDS[obj.tag],
        from_name=control.name,
        to_name=obj.name,
        object_tag=obj.tag,
        value_key=value[1:],
        labels=labels,
        multilabel=(control.attr or {}).get("choice") == "multiple",
    )
