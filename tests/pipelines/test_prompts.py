import pytest

from actors.errors import InputError
from pipelines.prompts import BUILTIN_PROMPTS, load_prompts


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
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.txt"), None)
