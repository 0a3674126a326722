"""What a run keeps of the commands that made it (docs/CONTRACTS.md, run layout).

- ``config.yaml``: the resolved config of the run's first command, never rewritten.
- ``configs/<UTC time>-<command>.yaml``: the config of a later command, where it differs.
- ``logs/<UTC time>-<command>.log``: each command's full driver log (see ``pipelines.run_log``).

A later ``align`` whose config would change what completed work means (another model, sampling,
scorer, pairing, prompts or trainer recipe) is refused in one line: its rounds would mix two
configs under one name. Settings of where and how fast the work runs (pools, Ray, storage timeouts,
trainer worker count, rounds) may change freely.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import yaml

from actors.errors import InputError
from pipelines.config import VideoGPAConfig, build_config, dump_config
from pipelines.storage import RunStore

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
# Dotted keys (and their subkeys) that do not change the meaning of completed work.
FREE_TO_CHANGE = (
    "rounds", "output_uri", "ray", "storage", "evaluation", "text_pool", "generation_pool", "scoring_pool",
    "encoding_pool", "tracking",
    "trainer.num_workers", "trainer.use_gpu", "trainer.cpus_per_worker", "trainer.max_failures",
    "trainer.log_every", "trainer.data_cache_mb",
)


def command_stamp() -> str:
    """UTC time to the second, as file names of this command's records use it."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def _as_schema_reads_it(recorded: dict) -> dict:
    """A recorded config as the current schema resolves it: keys added to the schema since it was
    written take their defaults (a new option is no change of meaning); one the schema no longer
    accepts leaves it as written, so the difference shows."""
    try:
        return yaml.safe_load(dump_config(build_config(recorded)))
    except InputError:
        return recorded


def meaning_changes(first: dict, now: dict) -> list[str]:
    """Dotted keys whose value differs between two configs, less those in :data:`FREE_TO_CHANGE`."""
    a, b = _flatten(_as_schema_reads_it(first)), _flatten(now)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in changed if not any(k == free or k.startswith(free + ".") for free in FREE_TO_CHANGE)]


def _has_work(store: RunStore) -> bool:
    return any(f.endswith((".done.json", "manifest.json")) for d in store.list_dirs("") if d.startswith("round-")
               for f in store.list_files(d))


def record_config(store: RunStore, cfg: VideoGPAConfig, command: str, stamp: str,
                  allow_change: bool = False) -> str:
    """Save this command's config where SPEC says; the run-relative path of the config it runs under."""
    text = dump_config(cfg)
    if not store.exists(RUN_CONFIG):
        store.write_bytes(RUN_CONFIG, text.encode("utf-8"))
        return RUN_CONFIG
    first_text = store.read_bytes(RUN_CONFIG).decode("utf-8")
    if first_text == text:
        return RUN_CONFIG
    changes = meaning_changes(yaml.safe_load(first_text), yaml.safe_load(text))
    if command == "align" and changes and not allow_change and _has_work(store):
        shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise InputError(f"config differs from {store.uri(RUN_CONFIG)} in {shown}, which its completed work was made "
                         "with; use a new run_name (or --allow-config-change to mix them)")
    rel = f"configs/{stamp}-{command}.yaml"
    store.write_bytes(rel, text.encode("utf-8"))
    log.info("config differs from the run's %s (%s); this command's is %s", RUN_CONFIG,
             ", ".join(changes) or "settings of where the work runs", store.uri(rel))
    return rel
