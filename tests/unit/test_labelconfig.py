import pytest

from ml_backend.labelstudio.labelconfig import UnsupportedConfig, parse_label_config

TEXT = (
    '<View><Text name="text" value="$review"/><Choices name="sentiment" toName="text"><Choice value="Pos"/>'
    '<Choice value="Neg"/></Choices></View>'
)
MULTI = (
    '<View><HyperText name="page" value="$html"/><Choices name="topics" toName="page" choice="multiple">'
    '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices><TextArea name="note" toName="page"/>'
    "</View>"
)
IMAGE = (
    '<View><Image name="img" value="$image"/><Choices name="digit" toName="img"><Choice value="0"/>'
    '<Choice value="1"/></Choices></View>'
)


def test_text_single_label():
    s = parse_label_config(TEXT)
    assert (s.kind, s.from_name, s.to_name, s.value_key, s.labels, s.multilabel) == (
        "text",
        "sentiment",
        "text",
        "review",
        ("Pos", "Neg"),
        False,
    )
    assert s.make_result(["Pos"]) == [
        {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["Pos"]}}
    ]
    assert s.make_result([]) == []


def test_hypertext_multilabel_strips_html_and_ignores_other_controls():
    s = parse_label_config(MULTI)
    assert s.kind == "text" and s.multilabel and s.labels == ("a", "b", "c")
    assert s.task_input({"html": "<p>Hello&amp;<b>bye</b></p>"}).split() == ["Hello&", "bye"]


def test_image():
    s = parse_label_config(IMAGE)
    assert s.kind == "image" and s.value_key == "image"


@pytest.mark.parametrize(
    "config, words",
    [
        ("", "empty"),
        ("<View><Text name=", "cannot parse"),
        ('<View><Text name="t" value="$t"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>', "Choices"),
        (
            (
                '<View><Audio name="a" value="$a"/><Choices name="c" toName="a"><Choice value="x"/>'
                '<Choice value="y"/></Choices></View>'
            ),
            "Audio",
        ),
        (
            '<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="x"/></Choices></View>',
            "at least 2",
        ),
    ],
)
def test_unsupported_configs_say_what_is_supported(config, words):
    with pytest.raises(UnsupportedConfig, match=words):
        parse_label_config(config)


def test_task_input_errors_are_clear():
    s = parse_label_config(TEXT)
    with pytest.raises(ValueError, match="no 'review' key"):
        s.task_input({"text": "x"})
    with pytest.raises(ValueError, match="empty"):
        s.task_input({"review": "   "})
    with pytest.raises(ValueError, match="must be a string"):
        s.task_input({"review": 3})


def test_labels_from_result_separates_unknown_labels():
    s = parse_label_config(TEXT)
    result = [
        {"from_name": "sentiment", "value": {"choices": ["Pos", "Meh"]}},
        {"from_name": "other", "value": {"choices": ["Neg"]}},
    ]
    assert s.labels_from_result(result) == (["Pos"], ["Meh"])
