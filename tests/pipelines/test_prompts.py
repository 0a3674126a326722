import pytest

from actors.errors import InputError
from pipelines.prompts import BUILTIN_PROMPTS, Prompt, load_prompts


def test_builtin_prompts_have_stable_ids():
    a, b = load_prompts(None, None), load_prompts(None, 3)
    assert len(a) == len(BUILTIN_PROMPTS) and [p.prompt_id for p in a[:3]] == [p.prompt_id for p in b]


def test_txt_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a red house\n\n a blue car \n")
    assert [p.text for p in load_prompts(str(tmp_path / "p.txt"), None)] == ["a red house", "a blue car"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "id": "one", "image": "img.png"}\n{"prompt": "y"}\n')
    rows = load_prompts(str(tmp_path / "p.jsonl"), None)
    assert (rows[0].prompt_id, rows[0].image) == ("one", "img.png") and rows[1].image is None


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.txt", b"", "holds no prompts"),
        ("blank.txt", b"\n  \n", "holds no prompts"),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "is not UTF-8"),
        ("bad.jsonl", b'{"prompt": "x"\n', "line 1: not valid JSON"),
        ("noprompt.jsonl", b'{"text": "x"}\n', "line 1: needs a non-empty string field"),
        ("extra.jsonl", b'{"prompt": "x", "colour": 1}\n', "unknown field 'colour'"),
        ("dup.jsonl", b'{"prompt": "x", "id": "a"}\n{"prompt": "y", "id": "a"}\n', "appears more than once"),
    ],
)
def test_bad_prompt_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        load_prompts(str(tmp_path / name), None)
    assert "\n" not in str(info.value)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(InputError, match="nope.txt' does not exist: set prompts.path=FILE"):
        load_prompts(str(tmp_path / "nope.txt"), None)
    with pytest.raises(InputError, match="does not exist: set evaluation.prompts.path=FILE"):
        load_prompts(str(tmp_path / "nope.json"), None, key="evaluation.prompts.path")


def test_official_prompt_files_and_dl3dv_captions(tmp_path):
    """The paper's prompt files load: the released DL3DV captions (id → caption, as CogVLM wrote them)
    and both shapes of the official scripts' --prompt_json; ids are their keys, "/" as "_"."""
    import json

    captions = {"1K/0a1b2c/images_8": " A room with a chair.\n", "1K/3d4e5f/images_8": "A stone bridge."}
    (tmp_path / "captions_1K.json").write_text(json.dumps(captions))
    rows = load_prompts(str(tmp_path / "captions_1K.json"), None)
    assert [(p.prompt_id, p.text, p.image) for p in rows] == [
        ("1K_0a1b2c_images_8", "A room with a chair.", None), ("1K_3d4e5f_images_8", "A stone bridge.", None)]
    assert [p.prompt_id for p in load_prompts(str(tmp_path / "captions_1K.json"), None)] == \
        [p.prompt_id for p in rows]  # stable
    (tmp_path / "objects.json").write_text(json.dumps({"g1": {"text_prompt": "a hall", "image_prompt": "a.png"}}))
    assert load_prompts(str(tmp_path / "objects.json"), None)[0] == Prompt("g1", "a hall", "a.png")
    listed = [{"group_id": "scene/7", "text_prompt": "a tower", "image": "s3://b/first.png"}, {"prompt": " a lake "}]
    (tmp_path / "list.json").write_text(json.dumps(listed))
    assert load_prompts(str(tmp_path / "list.json"), 1) == [Prompt("scene_7", "a tower", "s3://b/first.png")]
    assert load_prompts(str(tmp_path / "list.json"), None)[1] == Prompt("1", "a lake")


@pytest.mark.parametrize(
    "content,message",
    [
        ("{", "not valid JSON"),
        ("3", "expected a JSON object of id"),
        ("{}", "holds no prompts"),
        ('{"a": ""}', "entry 'a': needs a non-empty caption"),
        ('[{"group_id": "g", "text": "x"}]', "entry 'g': needs a non-empty caption"),
        ('{"a": {"prompt": "x", "image": 5}}', "entry 'a': its image must be a path"),
        ('{"a/b": "x", "a_b": "y"}', "'a_b' appears more than once"),
    ],
)
def test_bad_official_prompt_files_name_the_problem(tmp_path, content, message):
    (tmp_path / "p.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        load_prompts(str(tmp_path / "p.json"), None)
    assert "\n" not in str(info.value)
