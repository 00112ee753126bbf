"""Image projects for the e2e tests: sklearn digits rendered to PNG and UPLOADED to Label Studio.

Uploaded files live in LS's media storage (``/data/upload/<project>/<uuid>-<name>``), so the backend can read them
only by downloading them from LS with its token: exactly what these tests exercise.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.lsapi import LSApi

DIGIT_CLASSES = ("0", "1", "2")


def label_config(classes=DIGIT_CLASSES) -> str:
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in classes)
    return f"""<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image" choice="single">
{choices}
  </Choices>
</View>"""


def digit_images(out_dir: Path, per_class: int, classes=DIGIT_CLASSES, size: int = 64) -> list[tuple[Path, str]]:
    """``per_class`` 64x64 PNG digits of each class in ``classes`` (real handwritten digits, upscaled)."""
    from ml_backend.simulation.datasets import digits_png

    data = digits_png(out_dir, n=per_class * 10, size=size, seed=0)  # class-balanced: per_class of each digit
    out: list[tuple[Path, str]] = []
    taken = {c: 0 for c in classes}
    for path, label in zip(data.paths, data.labels):
        if label in taken and taken[label] < per_class:
            out.append((path, label))
            taken[label] += 1
    assert all(v == per_class for v in taken.values()), taken
    return out


def create_image_project(
    api: LSApi, title: str, images: list[tuple[Path, str]], chunk: int = 20
) -> tuple[int, dict[int, str]]:
    """A project whose tasks are the uploaded images; returns its id and {task id: true label}."""
    project = api.create_project(title, label_config())
    pid = project["id"]
    by_name = {p.name: label for p, label in images}
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        r = api.upload_files(pid, [(p.name, p.read_bytes(), "image/png") for p, _ in part])
        assert r["task_count"] == len(part), r
    truth: dict[int, str] = {}
    for task in api.tasks(pid):
        url = task["data"]["image"]
        assert url.startswith(f"/data/upload/{pid}/"), f"not an uploaded file: {url}"
        stored = task["file_upload"]  # "<8 hex>-<original name>"
        original = stored.split("-", 1)[1]
        truth[task["id"]] = by_name[original]
    assert len(truth) == len(images), (len(truth), len(images))
    return pid, truth
