"""Everything a command can check on the driver, before any pool, actor or worker starts and before
it writes anything into the run: a mistake found there is one line naming the key, file or URI,
not an actor dying minutes later behind a screen of Ray traceback.
"""

from __future__ import annotations

import logging

from actors.errors import InputError
from actors.families import objective_family
from actors.gfm import check_backend
from actors.lora_formats import check_lora
from actors.model_source import check_model
from pipelines.config import VideoGPAConfig
from pipelines.evaluate import evaluation_scoring, round_to_evaluate
from pipelines.placement import PARTS_OF, check_resources
from pipelines.prompts import BUILTIN_EVAL_PROMPTS, BUILTIN_PROMPTS, Prompt, check_images, load_prompts
from pipelines.rounds import check_stage_inputs
from pipelines.run_layout import storage_spec
from pipelines.storage import RunStore, storage_error

log = logging.getLogger(__name__)

# What each command runs (stage commands run one stage of one round).
_STAGE_OF = {"generate": "candidates", "pairs": "pairs", "train": "train", "score": "score"}
_LOADS_MODEL = {"align", "generate", "pairs", "train", "evaluate"}
_SCORES = {"align", "generate", "score", "evaluate"}


def check_storage(store: RunStore) -> None:
    """The run's storage answers with these credentials: its bucket exists and its folder can be
    listed (a read: nothing is written before the command is past every check)."""
    import pyarrow.fs as pafs

    if store.spec.is_s3:
        bucket = store.root.split("/", 1)[0]
        try:
            missing = store.fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except OSError as err:
            raise storage_error(store.uri(), err) from None
        if missing:
            raise InputError(f"output_uri {store.spec.uri!r}: bucket {bucket!r} does not exist (or these "
                             "credentials cannot see it); create it or fix output_uri")
    store.list_dirs("")


def preflight(cfg: VideoGPAConfig, command: str, round_index: int | None, started_here: bool,
              lora_dir: str | None = None) -> list[Prompt] | None:
    """Raise the first InputError this command would meet once distributed; otherwise return the
    prompts it checked (align, generate: the training prompts; evaluate: the evaluation prompts;
    None for the other commands). The command runs on these, read once: not on a second read of a
    file that may have changed since its images were checked. ``lora_dir``: evaluate's ``--lora``."""
    spec = storage_spec(cfg)
    prompts = None
    if command in _LOADS_MODEL:
        check_model(cfg.model, cfg.sampling)
    if command in _SCORES:
        check_backend(evaluation_scoring(cfg) if command == "evaluate" else cfg.scoring)
    if command in ("align", "generate"):
        prompts = load_prompts(cfg.prompts.path, cfg.prompts.limit, spec, builtin=BUILTIN_PROMPTS)
        check_images(prompts, cfg.model.family, cfg.prompts.path, spec)
    store = RunStore(spec, cfg.run_name)  # read here, written only once the command is past these checks
    check_storage(store)
    if command == "evaluate":
        ev = cfg.evaluation.prompts
        prompts = load_prompts(ev.path, ev.limit, spec, builtin=BUILTIN_EVAL_PROMPTS, key="evaluation.prompts.path")
        check_images(prompts, cfg.model.family, ev.path, spec)
        if lora_dir:
            check_lora(cfg.model, lora_dir)
        else:
            round_to_evaluate(store, cfg.rounds, round_index)
    if command in ("align", "train", "pairs"):
        objective_family(cfg.model.family, cfg.trainer.official_objective)
    if command in ("align", "train") and cfg.trainer.init_lora:
        check_lora(cfg.model, cfg.trainer.init_lora, "trainer.init_lora " + cfg.trainer.init_lora)
    if command in _STAGE_OF:
        check_stage_inputs(store, _STAGE_OF[command], round_index or 0)
    check_resources(cfg, command, started_here)
    check_gpu_memory(cfg, command)
    log.info("%s: config, model, prompts and cluster checked before starting", command)
    return prompts


# The config section of each part of a run (placement.PARTS_OF) and the plan's stage it runs.
_STAGE_OF_PART = {"text_pool": "text", "generation_pool": "generate", "scoring_pool": "score",
                  "encoding_pool": "encode", "trainer": "train"}


def check_gpu_memory(cfg: VideoGPAConfig, command: str) -> None:
    """Refuse, in one line, a pool (or trainer) that asks for GPUs whose actors' memory plan
    (``pipelines.plan``) exceeds what each gets of one: it would run out of memory on its first batch.
    Pools without GPUs are not checked."""
    parts = [p for p in PARTS_OF.get(command, ()) if p in _STAGE_OF_PART and
             (cfg.trainer.use_gpu if p == "trainer" else getattr(cfg, p).num_gpus > 0)]
    if not parts:
        return
    from pipelines.plan import GIB, plan_stages

    stages = plan_stages(cfg)
    for part in parts:
        stage = stages[_STAGE_OF_PART[part]]
        if stage.total <= stage.budget_gib * GIB:
            continue
        key = "trainer.gpu_memory_gib" if part == "trainer" else f"{part}.gpu_memory_gib"
        parts_gib = f"weights {stage.weights / GIB:.1f} + activations {stage.activations / GIB:.1f}"
        raise InputError(
            f"{key}: {part} needs {stage.total / GIB:.1f} GiB per actor by its memory plan "
            f"({', '.join(stage.components)}: {parts_gib}; `videogpa plan` shows it), "
            f"more than the {stage.budget_gib:.1f} GiB it gets ({stage.where}); use GPUs with more memory, "
            "a smaller batch or sampling size, or spread the work over more GPUs")
