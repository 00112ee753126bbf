"""Export formats on their own: CVAT XML against an XSD of CVAT's documented format, Prodigy's fields, CSV.

(The LS JSON round trip through a real Label Studio and the HTTP and CLI paths are in
tests/integration/test_dashboard.py.)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from lxml import etree
from PIL import Image

from ml_backend.exports.formats import (
    HUMAN,
    MODEL,
    ExportError,
    ExportItem,
    check_format,
    csv_table,
    cvat_xml,
    ls_json,
    prodigy_jsonl,
)
from ml_backend.exports.project import image_size
from ml_backend.labelstudio.labelconfig import parse_label_config

XSD = Path(__file__).parent / "data" / "cvat_for_images_1_1.xsd"
IMAGES = parse_label_config(
    '<View><Image name="img" value="$image"/><Choices name="kind" toName="img" choice="multiple">'
    '<Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>'
)
TEXTS = parse_label_config(
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>'
)


def test_cvat_xml_validates_against_cvats_format(tmp_path):
    urls = [f"http://ls/data/upload/1/img{i}.png" for i in range(2)]
    files = {url: tmp_path / f"img{i}.png" for i, url in enumerate(urls)}
    for url, size in zip(urls, [(64, 48), (30, 90)]):
        Image.new("RGB", size).save(files[url])
    items = [
        ExportItem(11, {"image": urls[0]}, urls[0], ["cat"], HUMAN),
        ExportItem(12, {"image": urls[1]}, urls[1], ["dog", "bird"], MODEL, 0.1, {"reason": "learn"}),
    ]
    fetched = []

    def fetch(url: str, task_id: int | None) -> Path:  # stands in for the LS client's download (a file cache)
        fetched.append(task_id)
        return files[url]

    xml = cvat_xml(items, IMAGES, "project-1-next", image_size(fetch))
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.fromstring(xml)
    schema.assertValid(doc)
    images = doc.findall("image")
    assert [(i.get("name"), i.get("width"), i.get("height")) for i in images] == [
        ("img0.png", "64", "48"),
        ("img1.png", "30", "90"),
    ]
    assert [(t.get("label"), t.get("source")) for t in images[1].findall("tag")] == [("dog", "auto"), ("bird", "auto")]
    assert images[0].find("tag").get("source") == "manual" and fetched == [11, 12]
    assert [n.text for n in doc.findall("meta/task/labels/label/name")] == ["cat", "dog", "bird"]
    assert doc.findtext("meta/task/size") == "2"
    broken = etree.fromstring(xml.replace(b'width="64"', b'width="wide"'))
    assert not schema.validate(broken)  # the schema does check what it describes


def test_formats_a_project_cannot_hold_are_refused_before_any_work():
    with pytest.raises(ExportError, match="image"):
        check_format("cvat-xml", TEXTS)
    with pytest.raises(ExportError, match="unknown format"):
        check_format("yaml", TEXTS)
    check_format("cvat-xml", IMAGES)


def test_prodigy_lines_hold_the_input_labels_answer_and_score():
    items = [
        ExportItem(1, {"text": "good"}, "good", ["fresh"], HUMAN, meta={"model_label": "rotten"}),
        ExportItem(2, {"text": "meh"}, "meh", ["rotten"], MODEL, 0.25, {"reason": "uncertainty"}),
        ExportItem(3, {"text": "?"}, "?", [], MODEL, 0.5),
    ]
    rows = [json.loads(line) for line in prodigy_jsonl(items, TEXTS).decode().splitlines()]
    assert rows[0] == {
        "text": "good",
        "options": [{"id": "fresh", "text": "fresh"}, {"id": "rotten", "text": "rotten"}],
        "accept": ["fresh"],
        "label": "fresh",
        "answer": "accept",
        "meta": {"score": None, "task_id": 1, "source": "human", "model_label": "rotten"},
    }
    assert "answer" not in rows[1] and rows[1]["meta"]["score"] == 0.25 and rows[1]["label"] == "rotten"
    assert "label" not in rows[2] and rows[2]["accept"] == []
    multi = json.loads(prodigy_jsonl([ExportItem(4, {}, "http://i/4.png", ["cat", "dog"], HUMAN)], IMAGES))
    assert multi["image"] == "http://i/4.png" and multi["accept"] == ["cat", "dog"] and "label" not in multi


def test_ls_json_and_csv_rows():
    items = [
        ExportItem(1, {"text": "good"}, "good", ["fresh"], HUMAN),
        ExportItem(2, {"text": 'a, "quoted"\nline'}, 'a, "quoted"\nline', ["rotten"], MODEL, 0.25, {"rank": 1}),
    ]
    tasks = json.loads(ls_json(items, TEXTS, "minilm-v3-x"))
    assert tasks[0]["annotations"][0]["result"][0]["value"] == {"choices": ["fresh"]} and "predictions" not in tasks[0]
    assert tasks[1]["predictions"][0] == {
        "result": TEXTS.make_result(["rotten"]),
        "model_version": "minilm-v3-x",
        "score": 0.25,
    }
    assert tasks[1]["meta"] == {"source_task": 2, "rank": 1}
    rows = list(csv.reader(io.StringIO(csv_table(items).decode())))
    assert rows[0] == ["task_id", "input", "labels", "source", "score", "rank"]
    assert rows[2] == ["2", 'a, "quoted"\nline', "rotten", "model", "0.25", "1"]
