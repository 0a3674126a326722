"""Prompts for a round: a .txt file (one per line), a .jsonl file, a .json file, or the built-in list.

A JSONL line is ``{"prompt": "...", "id": "optional-stable-id", "image": "optional path or s3:// URI"}``.
A .json file holds the paper's own prompt files, as the official generation scripts read them
(``--prompt_json``) and as the released DL3DV captions (``dl3dv_video_captions/captions_*K.json``) are:
an object of id → caption (or id → ``{"text_prompt" | "prompt", "image"}``), or a list of
``{"group_id", "text_prompt" | "prompt", "image"}``. Their ids are the keys (``group_id``), with "/" as
"_" as the official scripts write them; the captions are stripped of surrounding whitespace.
Prompt ids are stable (given, or a hash of the text) so pair ids and resumes are deterministic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow.fs as pafs

from actors.errors import InputError
from pipelines.storage import StorageSpec, make_filesystem, read_bytes, storage_error

# Scenes with camera motion and rigid structure, where 3D drift is visible.
BUILTIN_PROMPTS = (
    "a slow orbit around a red brick house in a green garden",
    "a camera dollies forward down a narrow stone alley at dusk",
    "a drone pans across a rocky coastline with a white lighthouse",
    "a camera circles a wooden table with a blue vase and books",
    "a tracking shot past parked cars on a rainy city street",
    "a camera moves through a library between tall bookshelves",
    "an aerial orbit of a snowy mountain cabin",
    "a handheld walk through a sunlit greenhouse full of plants",
)

# Held out from training: used by `videogpa evaluate` when no evaluation prompts file is given.
BUILTIN_EVAL_PROMPTS = (
    "a camera orbits a stone fountain in a quiet town square",
    "a slow dolly shot through a furnished living room",
    "a drone flies along a river between autumn trees",
    "a camera pans across a kitchen counter with fruit and jars",
)


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    image: str | None = None  # path or s3:// URI of the first frame (I2V)


def prompt_id_for(text: str) -> str:
    return "p" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def load_prompts(path: str | None, limit: int | None, storage: StorageSpec | None = None,
                 builtin: tuple[str, ...] = BUILTIN_PROMPTS, key: str = "prompts.path") -> list[Prompt]:
    """Read and validate prompts; any problem is one InputError naming the file and line (a file
    that does not exist: also the config key ``key`` that names it, and how to set it)."""
    if path is None:
        prompts = [Prompt(prompt_id_for(t), t) for t in builtin]
    else:
        prompts = _parse(path, _read_text(path, storage, key))
    if limit is not None:
        prompts = prompts[:limit]
    ids = [p.prompt_id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"prompts file {path!r}: prompt id {dup!r} appears more than once")
    return prompts


def _read_text(path: str, storage: StorageSpec | None, key: str) -> str:
    if path.startswith("s3://"):
        fs, where = make_filesystem(StorageSpec(path, storage.endpoint_url if storage else None,
                                                storage.region if storage else None))
    else:
        fs, where = pafs.LocalFileSystem(), path
    try:
        found = fs.get_file_info(where).type == pafs.FileType.File
    except OSError as err:
        raise storage_error(path, err) from None
    if not found:
        raise InputError(f"prompts file {path!r} does not exist: set {key}=FILE (a .txt, .jsonl or .json file, "
                         "local or s3://, e.g. the paper's DL3DV captions captions_10K.json) or null for the "
                         "built-in prompts")
    data = read_bytes(fs, where)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"prompts file {path!r} is not UTF-8 (bad byte at offset {err.start})") from None


def _parse(path: str, text: str) -> list[Prompt]:
    if path.endswith(".json"):
        return _parse_json(path, text)
    jsonl = path.endswith(".jsonl")
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompts.append(_parse_jsonl_line(path, number, line) if jsonl
                       else Prompt(prompt_id_for(line.strip()), line.strip()))
    if not prompts:
        raise InputError(f"prompts file {path!r} holds no prompts")
    return prompts


def _parse_jsonl_line(path: str, number: int, line: str) -> Prompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise InputError(f"prompts file {path!r} line {number}: not valid JSON") from None
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise InputError(f"prompts file {path!r} line {number}: needs a non-empty string field \"prompt\"")
    unknown = set(row) - {"prompt", "id", "image"}
    if unknown:
        raise InputError(f"prompts file {path!r} line {number}: unknown field {sorted(unknown)[0]!r}")
    text = row["prompt"].strip()
    return Prompt(str(row.get("id") or prompt_id_for(text)), text, row.get("image"))


# The fields of an official prompt entry: its text under either name, its first frame under any of these.
_TEXT_FIELDS = ("text_prompt", "prompt")
_IMAGE_FIELDS = ("image", "image_prompt", "image_path")


def _parse_json(path: str, text: str) -> list[Prompt]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"prompts file {path!r}: not valid JSON (line {err.lineno})") from None
    if isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        entries = [(item.get("group_id", index) if isinstance(item, dict) else index, item)
                   for index, item in enumerate(data)]
    else:
        raise InputError(f"prompts file {path!r}: expected a JSON object of id → caption or a list of "
                         "{group_id, text_prompt, image}")
    prompts = [_json_entry(path, str(key), value) for key, value in entries]
    if not prompts:
        raise InputError(f"prompts file {path!r} holds no prompts")
    return prompts


def _json_entry(path: str, key: str, value: object) -> Prompt:
    where = f"prompts file {path!r} entry {key!r}"
    image = None
    if isinstance(value, dict):
        text = next((value[f] for f in _TEXT_FIELDS if isinstance(value.get(f), str)), None)
        image = next((value[f] for f in _IMAGE_FIELDS if value.get(f)), None)
        if image is not None and not isinstance(image, str):
            raise InputError(f"{where}: its image must be a path or s3:// URI")
    else:
        text = value
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: needs a non-empty caption (a string, or \"text_prompt\" / \"prompt\")")
    return Prompt(key.replace("/", "_"), text.strip(), image)


def check_images(prompts: list[Prompt], family: str, source: str | None, storage: StorageSpec | None = None) -> None:
    """Each prompt's image is as ``family`` needs it (required by image-to-video, refused by
    text-to-video models) and readable: local files are opened as images, s3:// objects must exist."""
    from PIL import Image, UnidentifiedImageError

    from actors.families import get_family

    model = get_family(family)
    where = f"prompts file {source!r}" if source else "the built-in prompts"
    for p in prompts:
        if not p.image:
            if model.requires_image:
                raise InputError(f"{where}: prompt {p.prompt_id!r} has no \"image\", which {family} (image-to-video) "
                                 "needs; give each prompt an image path or s3:// URI")
            continue
        if not model.accepts_image:
            raise InputError(f"{where}: prompt {p.prompt_id!r} has an image, but {family} is text-to-video; drop the "
                             "\"image\" fields or use an image-to-video family")
        if p.image.startswith("s3://"):
            fs, key = make_filesystem(StorageSpec(p.image, storage.endpoint_url if storage else None,
                                                  storage.region if storage else None))
            if fs.get_file_info(key).type != pafs.FileType.File:
                raise InputError(f"{where}: prompt {p.prompt_id!r}: image {p.image!r} does not exist")
            continue
        try:
            with Image.open(p.image) as image:
                image.verify()
        except FileNotFoundError:
            raise InputError(f"{where}: prompt {p.prompt_id!r}: image {p.image!r} does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError):
            raise InputError(f"{where}: prompt {p.prompt_id!r}: image {p.image!r} "
                             "is not a readable image file") from None
