"""The ``videogpa`` command: the main job, each stage alone, evaluation, a run's report, and scoring of video files."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable

from actors.errors import InputError, StorageFailure

STAGE_COMMANDS = {"generate": "candidates", "pairs": "pairs", "train": "train"}


# How a one-line error reads in a remote traceback that Ray keeps only as text (an actor that died in
# its constructor becomes an ActorDiedError holding the creation task's traceback as a string).
_REMOTE_ONE_LINE = re.compile(r"^(?:actors\.errors\.)?(InputError|StorageFailure): (.+)$", re.MULTILINE)
# An OSError as Ray forwards it from a Ray Data write operator or a trainer worker.
_REMOTE_OS_ERROR = re.compile(r"^(?:\w+\.)*(?:OSError|FileNotFoundError|PermissionError): (.+)$", re.MULTILINE)
# Where pyarrow's and the AWS SDK's messages name the file: '<path>', or key 'k' in bucket 'b'.
_NAMED_PATH = re.compile(r"key '([^']+)' in bucket '([^']+)'|'(/[^']+)'")


def _one_line(err: BaseException, where: str) -> tuple[int, InputError | StorageFailure] | None:
    """The exit status and the one-line error inside whatever Ray wrapped it in: RayTaskError/
    UserCodeException (``cause``), Ray Train's TrainingFailedError (``worker_failures``,
    ``controller_failure``), exception groups, and ActorDiedError (the text of its creation task's
    traceback). A storage failure (no space, permission denied, missing bucket, expired credentials)
    raised as a plain OSError, e.g. by a Ray Data write operator, becomes one line naming the file it
    names, else ``where``. Exit 2: bad input or refused; 1: a failure the same command resumes after."""
    from ray.exceptions import RayError

    from pipelines.storage import STORAGE_FAILURE_TEXTS, storage_error

    seen: set[int] = set()
    stack, texts, os_errors = [err], [], []
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Ray re-raises a remote error as a class deriving from both RayTaskError and the error's
        # own class, whose text is the whole remote traceback: its ``cause`` is the error itself.
        if isinstance(current, (InputError, StorageFailure)) and not isinstance(current, RayError):
            return (1 if isinstance(current, StorageFailure) else 2), current
        if isinstance(current, OSError) and not isinstance(current, RayError):
            os_errors.append(current)
        texts.append(str(current))
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None),
                      getattr(current, "controller_failure", None)])
        stack.extend(e for e in getattr(current, "exceptions", []) if isinstance(e, BaseException))
        stack.extend(e for e in (getattr(current, "worker_failures", None) or {}).values()
                     if isinstance(e, BaseException))
    for text in texts:
        found = _REMOTE_ONE_LINE.findall(text)
        if found:
            kind, message = found[-1]
            return (1, StorageFailure(message.strip())) if kind == "StorageFailure" else (2, InputError(message))
    candidates = [(str(e), e) for e in os_errors]
    candidates += [(m, OSError(m)) for t in texts for m in _REMOTE_OS_ERROR.findall(t)]
    for text, os_error in candidates:
        if any(s in text for s in STORAGE_FAILURE_TEXTS):
            named = _NAMED_PATH.search(text)
            place = (f"s3://{named.group(2)}/{named.group(1)}" if named and named.group(1) else
                     named.group(3) if named else where)
            one = storage_error(place, os_error)
            return (1 if isinstance(one, StorageFailure) else 2), one
    return None


def _config_on_ray(args: argparse.Namespace):
    """The validated config, with Ray joined: the cluster a `ray job submit` runs us on
    (RAY_ADDRESS), the configured address, or a new local one. Refused before any work where
    the cluster's nodes could not all reach ``output_uri`` or anything else the driver can check
    is wrong (``pipelines.preflight``). Returned with the prompts preflight read for the command."""
    import os

    import ray

    from actors import s3
    from pipelines.config import load_config
    from pipelines.placement import check_output_shared
    from pipelines.preflight import preflight
    from pipelines.progress import install as install_progress

    cfg = load_config(args.config, args.overrides)
    # The config's S3 settings win over the environment's, here and in a local Ray's workers
    # (which inherit this environment); actors on a joined cluster get them with their stage.
    s3.export_settings(s3.settings_env(cfg.storage.endpoint_url, cfg.storage.region))
    started_here = False
    if not ray.is_initialized():
        started_here = cfg.ray.address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(address=cfg.ray.address, log_to_driver=True)
    # Not on a terminal (`ray job logs`, a pipe, CI): one line per dataset and interval, not Ray Data's blocks
    install_progress(interactive=sys.stdout.isatty(), file_only=args.run_log.write_only_to_file)
    prompts = preflight(cfg, args.command, getattr(args, "round", None), started_here, getattr(args, "lora", None))
    check_output_shared(cfg)
    return cfg, prompts


def _open_run(args: argparse.Namespace, cfg):
    """The run's store, its lease taken (``pipelines.lease``: refused while another command writes
    the run), with this command's config recorded and its log attached."""
    import ray

    from pipelines.lease import acquire
    from pipelines.rounds import open_run
    from pipelines.run_layout import storage_spec
    from pipelines.storage import RunStore

    store = RunStore(storage_spec(cfg), cfg.run_name)
    args.where = store.uri()
    args.lease = acquire(store, cfg.storage.lease_timeout_s, args.command,
                         ray.get_runtime_context().get_job_id() if ray.is_initialized() else None)
    store = open_run(cfg, args.command, args.stamp, getattr(args, "allow_config_change", False), store=store)
    args.run_log.attach(store)
    return store


def _cmd_align(args: argparse.Namespace) -> int:
    from pipelines.rounds import run_align

    cfg, prompts = _config_on_ray(args)
    if args.dry_run:  # every check passed; nothing started, nothing written into the run
        print(json.dumps({"run": cfg.run_name, "dry_run": "ok", "output_uri": cfg.output_uri,
                          "prompts": len(prompts or []), "model": cfg.model.pretrained}))
        return 0
    results = run_align(cfg, _open_run(args, cfg), prompts)
    last = results[-1] if results else {}
    print(json.dumps({"run": cfg.run_name, "rounds": len(results), "last_round": last}, default=str))
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from pipelines.prompts import load_prompts
    from pipelines.rounds import run_round
    from pipelines.run_layout import storage_spec

    cfg, prompts = _config_on_ray(args)
    store = _open_run(args, cfg)
    if prompts is None:  # pairs, train: their preflight reads no prompts
        prompts = load_prompts(cfg.prompts.path, cfg.prompts.limit, storage_spec(cfg))
    run_round(cfg, store, prompts, args.round, stages=(STAGE_COMMANDS[args.command],))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pipelines.rounds import rescore_round

    cfg, _ = _config_on_ray(args)
    listing = rescore_round(cfg, _open_run(args, cfg), args.round)
    print(json.dumps({"round": args.round, "candidates": listing["rows"]}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import run_evaluate
    from pipelines.rounds import write_report

    cfg, prompts = _config_on_ray(args)
    store = _open_run(args, cfg)
    result = run_evaluate(cfg, args.round, store, prompts, args.lora)
    write_report(store)  # the report shows the evaluation
    print(result["table"])
    return 0


def _cmd_convert_lora(args: argparse.Namespace) -> int:
    from actors.lora_formats import convert_lora

    source_format = convert_lora(args.lora, args.out, to=args.to)
    print(json.dumps({"lora": args.lora, "format": source_format, f"{args.to}_lora": args.out}))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """(Re)write the run's report from what its folder holds; needs no Ray."""
    from pipelines.config import load_config
    from pipelines.report import write_run_report
    from pipelines.run_layout import storage_spec
    from pipelines.storage import RunStore

    cfg = load_config(args.config, args.overrides)
    store = RunStore(storage_spec(cfg), cfg.run_name)
    if not store.exists("config.yaml"):
        raise InputError(f"no run at {store.uri()} (it has no config.yaml); check output_uri and run_name")
    args.run_log.attach(store)
    print(write_run_report(store))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    """Each stage's GPU memory and a round's GPU-hours from the configs alone; needs no Ray and no GPU."""
    from pipelines.config import load_config
    from pipelines.plan import plan_report

    result, table = plan_report(load_config(args.config, args.overrides))
    print(table)
    if args.json:
        print(json.dumps(result))
    return 0


def _cmd_score_video(args: argparse.Namespace) -> int:
    from actors.scoring import ScoringConfig, VideoScorer
    from actors.video_io import decode_video

    scorer = VideoScorer(ScoringConfig(backend=args.backend, weights=args.weights, num_frames=args.num_frames,
                                       lpips_backbone=args.lpips_backbone, resolution=args.resolution,
                                       scorer="3dcs"))
    for path in args.videos:
        try:
            result = scorer.score(decode_video(path), with_epipolar=True)
        except InputError as err:
            message = str(err)
            raise (err if path in message else InputError(f"{path}: {message}")) from None
        # gfm_weights "random": an untrained GFM, whose 3DCS/MVCS/motion mean nothing (also logged)
        scores = {k: float(v) for k, v in result.items()}
        print(json.dumps({"video": path, "gfm_weights": scorer.gfm_weights, **scores}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videogpa", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="YAML config file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=2 trainer.zero_stage=3")
        p.set_defaults(handler=handler)
        return p

    p = with_config("align", "the main job: every round generates, scores, pairs, trains", _cmd_align)
    p.add_argument("--allow-config-change", action="store_true",
                   help="continue a run whose completed work was made under another model/sampling/scoring/"
                        "pairing/trainer config (the new config is recorded beside config.yaml)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check (model source, GFM backends, prompts, storage and its credentials, "
                        "placement on the cluster) and exit: no pool starts, nothing is written into the run")
    for name, stage in STAGE_COMMANDS.items():
        p = with_config(name, f"run the '{stage}' stage of one round alone", _cmd_stage)
        p.add_argument("--round", type=int, default=0)

    p = with_config("score", "score a round's stored candidates again with the configured scorer", _cmd_score)
    p.add_argument("--round", type=int, default=0)

    p = with_config("evaluate", "base vs base + LoRA on held-out prompts: PSNR, SSIM, LPIPS, MVCS, 3DCS, Epipolar",
                    _cmd_evaluate)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--round", type=int, default=None, help="whose LoRA (default: the last complete round)")
    which.add_argument("--lora", default=None,
                       help="evaluate this LoRA directory instead (diffusers or PEFT format, e.g. an official release)")

    p = sub.add_parser("convert-lora", help="write a PEFT-format LoRA (e.g. an official VideoGPA release, Wan "
                                            "module names too) as a diffusers-format LoRA directory, or "
                                            "(--to peft) a videogpa LoRA in the official releases' PEFT layout")
    p.add_argument("lora", help="the LoRA directory: a PEFT adapter (adapter_model.safetensors, with or without "
                                "adapter_config.json) or, with --to peft, a videogpa (diffusers-format) LoRA")
    p.add_argument("out", help="new directory for the converted LoRA")
    p.add_argument("--to", choices=["diffusers", "peft"], default="diffusers",
                   help="diffusers: pipe.load_lora_weights(out) (default); peft: adapter_model.safetensors + "
                        "adapter_config.json, as the official releases (PeftModel.from_pretrained(transformer, out))")
    p.set_defaults(handler=_cmd_convert_lora)

    with_config("report", "(re)write the run's HTML report (<run>/report.html)", _cmd_report)

    p = with_config("plan", "per stage: what its actors load, their GPU memory and whether it fits; GPU-hours per "
                            "round (from configs on the meta device: no weights read, no Ray)", _cmd_plan)
    p.add_argument("--json", action="store_true", help="also print the plan as one JSON object, last")

    p = sub.add_parser("score-video", help="print 3DCS, motion and evaluation metrics of video files")
    p.add_argument("videos", nargs="+")
    p.add_argument("--backend", default="tiny", choices=["tiny", "vggt", "da3"])
    p.add_argument("--weights", default=None, help="GFM weights (id, directory or safetensors file)")
    p.add_argument("--num-frames", type=int, default=10)
    p.add_argument("--resolution", type=int, default=None,
                   help="GFM input size, a multiple of 14 (default: the backend's own: tiny 56, vggt 518, da3 504)")
    p.add_argument("--lpips-backbone", default="auto", choices=["auto", "pretrained", "random"])
    p.set_defaults(handler=_cmd_score_video)
    return parser


def _leave_ray() -> None:
    """Disconnect from Ray while the run log still holds the streams: Ray prints the worker lines
    it held back for deduplication when it shuts down, which at exit would follow our last line
    and bypass the log's traceback filter."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    import traceback

    from pipelines.provenance import command_stamp
    from pipelines.run_log import RunLog

    args = build_parser().parse_args(argv)
    args.stamp = command_stamp()
    # Before logging is set up, so that its handlers (and Ray's) write through the log
    args.run_log = run_log = RunLog(args.command, args.stamp, tracebacks_on_terminal=args.debug)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    code, line = 0, None
    args.lease, args.where = None, None
    try:
        code = args.handler(args)
        if args.lease is not None:
            args.lease.fence()  # a command that lost the run while it ran says so, even with nothing left to write
    except KeyboardInterrupt:
        code, line = 130, "videogpa: interrupted; run the same command again to resume"
    except BaseException as err:  # noqa: BLE001 - the one place that turns errors into an exit code
        if args.debug or isinstance(err, SystemExit):
            run_log.close()
            _release(args.lease)
            raise
        found = _one_line(err, args.where or "the run's storage")
        if found is not None:
            code, one = found
            if code == 1:  # a failure, not bad input: its log keeps where it happened
                run_log.write_only_to_file(traceback.format_exc())
            line = f"videogpa: error: {one}" if code == 2 else f"videogpa: failed: {one}"
        else:
            # The traceback goes to the run's log only: the terminal gets one line that says where.
            run_log.write_only_to_file(traceback.format_exc())
            where = "; ".join(getattr(err, "__notes__", [])) or args.command
            first = str(err).splitlines()[0] if str(err) else ""
            code, line = 1, f"videogpa: failed in {where}: {type(err).__name__}: {first}"
    _leave_ray()
    if line is not None:  # a failure's line names its log, also in the log (where it will be, if it can be)
        run_log.write_only_to_file(line + (f" (full log: {run_log.planned_where})" if code == 1 else "") + "\n")
    saved = run_log.close(keep_local=code == 1)  # before the lease goes: the log is the command's last write
    _release(args.lease)
    if line is not None and saved is not None and (code == 1 or not saved.in_run):
        line += f" (full log: {saved.where})"
    if line is not None:
        print(line, file=sys.stderr)
    return code


def _release(lease) -> None:
    if lease is not None:
        lease.release()


if __name__ == "__main__":
    sys.exit(main())
