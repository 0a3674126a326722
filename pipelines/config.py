"""The run's configuration: one YAML file validated by a pydantic schema, plus dotted overrides.

Each layer owns the section it consumes (``actors`` the model, sampling and scoring sections,
``trainers`` the trainer section); this module composes them and adds what only the
orchestration needs (storage, pools, pairing, prompts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actors.errors import InputError
from actors.model_config import ModelConfig, SamplingConfig
from actors.scoring_config import ScoringConfig
from trainers.config import TrainerConfig
from trainers.tracking import TrackingConfig

_CREDENTIAL_KEYS = re.compile(r"(secret|access_key|password|token|credential)", re.IGNORECASE)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolConfig(_Section):
    """An elastic actor pool of Ray Data: the autoscaler grows it from min_size to max_size."""

    min_size: int = Field(1, ge=1)
    max_size: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    batch_size: int = Field(1, ge=1)
    # The memory of one GPU of the nodes this pool runs on: `videogpa plan` and preflight hold each
    # actor's plan against it, and the KubeRay manifests select a GPU type that has it.
    gpu_memory_gib: float = Field(80.0, gt=0)

    @model_validator(mode="after")
    def _sizes_ordered(self) -> PoolConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is smaller than min_size ({self.min_size})")
        return self


class PromptsConfig(_Section):
    """Where prompts come from: a .txt (one per line), .jsonl or .json file (the official prompt files and DL3DV
    captions: pipelines.prompts), local or s3://, or the built-in list when path is null."""

    path: str | None = None
    limit: int | None = Field(None, ge=1)


class PairingConfig(_Section):
    candidates_per_prompt: int = Field(4, ge=2)
    min_gap: float = Field(0.05, ge=0)
    motion_threshold: float = Field(0.001, ge=0)
    # Where the reward also falls with camera speed, best-vs-worst pairs teach "slow the camera down":
    # true takes per prompt the widest-gap pair whose winner moves at least as much as its loser.
    motion_matched: bool = False
    # Where the reward also falls as videos blur (a blurry frame re-renders well), they teach "blur":
    # true requires each pair's winner to be at least as sharp as its loser (with motion_matched, both).
    sharpness_matched: bool = False
    # Disjoint pairs per prompt (best vs worst, then the next best vs the next worst, ...): more pairs
    # from the same candidates where pairs, not samples, are scarce. 1 is the paper's best vs worst.
    pairs_per_prompt: int = Field(1, ge=1)
    # Rank candidates by their score less what a least-squares fit on the log of these explains (over
    # the round, within prompts): pairs then favour neither faster nor sharper videos, where matching
    # (above) makes every winner faster and sharper. Each pair keeps its raw scores.
    adjust_for: list[Literal["motion", "sharpness"]] = []
    # Drop a prompt whose winner (its best candidate) scores this or worse (lower is better): a winner that
    # is itself inconsistent teaches little. The fork jsw24000/VideoGPA_and_EpipolarDPO applies 0.8 on 3DCS
    # (the official 03_train.py defines 0.8 but never passes it on); null: no threshold.
    winner_threshold: float | None = None


class EvaluationConfig(_Section):
    """Held-out evaluation: base model against base + LoRA on prompts and seeds not used for training."""

    prompts: PromptsConfig = PromptsConfig()  # path null: the built-in held-out prompts
    seeds_per_prompt: int = Field(2, ge=1)
    seed: int = 1_000_003  # a different seed stream from training candidates
    # A run in the same output_uri whose base-model samples to reuse (made there if missing); null: this run.
    # Runs compared on the same held-out set then sample the base model once.
    base_run: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # The GFM the held-out samples are scored with (the paper's: DA3-Large at 504); null: the scoring section's.
    scoring: ScoringConfig | None = None
    # A video whose Epipolar no frame pair could score: left out of the mean ("drop", counted in the table) or
    # averaged in as -1, as the official benchmark does (metrics/epipolar.py returns -1; replicate_scorer.py
    # averages it).
    epipolar_unscorable: Literal["drop", "minus_one"] = "drop"


class StorageConfig(_Section):
    """S3-compatible storage settings. Credentials never live here: they come from the environment."""

    endpoint_url: str | None = None  # http(s)://host[:port]; a bare host[:port] means https
    region: str | None = None
    max_attempts: int = Field(5, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)
    # A run's lease (pipelines.lease) whose holder has not renewed it for this long is taken over by the
    # next command; the holder renews it every quarter of this, so a few slow S3 requests do not lose it.
    lease_timeout_s: float = Field(120.0, gt=0)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value if "://" in value else f"https://{value}")
        try:
            parsed.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or \
                parsed.path not in ("", "/") or parsed.query or any(c.isspace() for c in value):
            raise ValueError("expected http(s)://host[:port] of an S3 API server")
        return value


class RayConfig(_Section):
    address: str | None = None  # None: join a running cluster if there is one, else start a local one


class VideoGPAConfig(_Section):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    output_uri: str = "./runs"
    rounds: int = Field(1, ge=1)
    seed: int = 0
    prompts: PromptsConfig = PromptsConfig()
    model: ModelConfig
    sampling: SamplingConfig
    scoring: ScoringConfig = ScoringConfig()
    pairing: PairingConfig = PairingConfig()
    text_pool: PoolConfig = PoolConfig()  # encodes each prompt once per run (the text encoder alone)
    generation_pool: PoolConfig = PoolConfig()
    scoring_pool: PoolConfig = PoolConfig()
    encoding_pool: PoolConfig = PoolConfig()
    trainer: TrainerConfig = TrainerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()  # TensorBoard (on), MLflow, W&B: trainers.tracking


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise InputError(f"config override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``trainer.zero_stage=3`` → ("trainer.zero_stage", 3); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise InputError(f"config override {text!r}: expected key.path=value")
    try:
        return key, yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise InputError(f"config override {text!r}: value is not valid YAML ({err.__class__.__name__})") from None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        if _CREDENTIAL_KEYS.search(where):
            return f"{where}: credentials are not config keys; set them in the environment (e.g. AWS_ACCESS_KEY_ID)"
        return f"{where}: unknown config key"
    if first["type"] == "missing":
        return f"{where}: required config key is missing"
    given = first.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{where}: {first['msg']}{shown}"


def build_config(raw: dict[str, Any], overrides: list[str] = ()) -> VideoGPAConfig:
    tree = dict(raw)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return VideoGPAConfig.model_validate(tree)
    except ValidationError as err:
        raise InputError(f"config error: {_first_error(err)}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> VideoGPAConfig:
    """Read (with its ``base:`` recipes), override and validate a config file; every failure is one
    InputError line."""
    return build_config(read_recipe(Path(path)), overrides)


def read_recipe(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's keys with those of the recipe it builds on. ``base: FILE`` (relative to the recipe)
    names that recipe; its sections are merged key by key and the recipe's own values win, so a recipe
    states only what differs. Resolved before validation: the run records the whole resolved config."""
    raw = _read_yaml_mapping(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise InputError(f"config file {str(path)!r}: base must name a recipe file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {*_chain, path.resolve()}:
        raise InputError(f"config file {str(path)!r}: base {base!r} builds on itself")
    return _merged(read_recipe(base_path, (*_chain, path.resolve())), raw)


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in own.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"config file {str(path)!r} is a directory; "
                         "give a YAML file (e.g. configs/quickstart.yaml)") from None
    except UnicodeDecodeError:
        raise InputError(f"config file {str(path)!r} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise InputError(f"config file {str(path)!r} must hold a mapping of config keys")
    return raw


def dump_config(cfg: VideoGPAConfig) -> str:
    """The resolved config as YAML (it never holds credentials: the schema has no place for them)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
