"""How failures reach the terminal: the InputError inside Ray's real wrapper classes, and traceback
frames kept off the terminal (the run's log file keeps them)."""

from __future__ import annotations

import traceback

import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from ray.train.v2.api.exceptions import WorkerGroupError

from actors.errors import InputError
from pipelines.cli import _one_line
from pipelines.run_log import _TerminalFilter


def _remote(err: BaseException, function: str = "ray::MapWorker.__init__()") -> RayTaskError:
    """What Ray builds on the worker when ``err`` is raised there."""
    try:
        raise err
    except BaseException as raised:  # noqa: BLE001
        return RayTaskError(function, traceback.format_exc(), raised)


def _found(err: BaseException) -> str | None:
    found = _one_line(err, "the run")
    return None if found is None else str(found[1])


def test_input_error_inside_a_task_error_and_its_user_exception_subclass():
    task_error = _remote(InputError("sampling.num_frames: bad"))
    assert _found(task_error) == "sampling.num_frames: bad"
    assert _found(task_error.as_instanceof_cause()) == "sampling.num_frames: bad"


def test_input_error_of_an_actor_that_died_in_its_constructor():
    """ActorDiedError keeps the creation task's traceback as text only."""
    died = ActorDiedError(_remote(InputError("scoring.weights: /w.safetensors: not tiny-GFM safetensors weights")))
    assert not isinstance(getattr(died, "cause", None), BaseException)
    assert _found(died) == "scoring.weights: /w.safetensors: not tiny-GFM safetensors weights"


def test_input_error_of_a_ray_train_worker():
    failed = WorkerGroupError("Training failed", {0: RuntimeError("other rank"),
                                                  1: _remote(InputError("shard x.parquet: bad"), "ray::train_fn")})
    assert _found(failed) == "shard x.parquet: bad"


def test_other_failures_are_not_taken_for_input_errors():
    assert _found(ActorDiedError(_remote(RuntimeError("CUDA out of memory")))) is None
    assert _found(ExceptionGroup("g", [ValueError("v")])) is None
    assert _found(ExceptionGroup("g", [ValueError("v"), InputError("prompts file 'p.txt' holds no prompts")])) == \
        "prompts file 'p.txt' holds no prompts"


@pytest.mark.parametrize("source", ["", "\x1b[36m(MapWorker(MapBatches(ScoreCandidates)) pid=13022)\x1b[0m "])
def test_traceback_frames_stay_off_the_terminal(source):
    text = "".join(source + line + "\n" for line in [
        "loading model",
        "Traceback (most recent call last):",
        '  File "/x/stages.py", line 130, in __init__',
        "    self.scorer = VideoScorer(cfg)",
        "                  ^^^^^^^^^^^^^^^^",
        "actors.errors.InputError: scoring.weights: bad",
        "next line",
    ])
    kept = _TerminalFilter()
    shown = kept(text[:37]) + kept(text[37:]) + kept.flush()  # written in pieces, as streams are
    assert shown.splitlines() == [source + "loading model", source + "actors.errors.InputError: scoring.weights: bad",
                                  source + "next line"]


def test_interleaved_sources_are_filtered_apart():
    a, b = "(A pid=1) ", "(B pid=2) "
    kept = _TerminalFilter()
    shown = kept(f"{a}Traceback (most recent call last):\n{b}  indented output of B\n"
                 f'{a}  File "f.py", line 1, in g\n{a}    g()\n{a}ValueError: v\n')
    assert shown.splitlines() == [f"{b}  indented output of B", f"{a}ValueError: v"]


def _line(err: BaseException) -> tuple[int, str] | None:
    found = _one_line(err, "/runs/q")
    return None if found is None else (found[0], str(found[1]))


def test_storage_failures_inside_ray_wrappers_are_one_line_with_cause_and_place():
    """As pyarrow raises them in a Ray Data write task or a trainer worker: the cause in words, the
    file the message names (else the run), and the exit status (1: resume once fixed; 2: fix the config)."""
    full = OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert _line(_remote(full, "ray::Write()")) == (1, "storage error at /runs/q: no space left on device; free some "
                                                       "and run the same command again (it resumes)")
    worker = WorkerGroupError("Training failed", {0: _remote(OSError(
        "When uploading part for key 'q/round-000/lora/w.safetensors' in bucket 'b1': AWS Error NO_SUCH_BUCKET "
        "during UploadPart operation: The specified bucket does not exist"), "ray::train_fn")})
    assert _line(worker) == (2, "storage error at s3://b1/q/round-000/lora/w.safetensors: bucket 'b1' does not "
                                "exist; create it or fix output_uri")
    expired = ActorDiedError(_remote(OSError("When reading information for key 'q/x' in bucket 'b1': AWS Error "
                                             "UNKNOWN (HTTP status 400) during HeadObject operation: ExpiredToken")))
    code, text = _line(expired)
    assert code == 1 and text.startswith("storage error at s3://b1/q/x: S3 credentials expired"), text
    denied = _remote(PermissionError(13, "Permission denied", "/runs/q/round-000/videos/a.mp4"))
    assert _line(denied) == (2, "storage error at /runs/q/round-000/videos/a.mp4: permission denied; output_uri must "
                                "be writable by this user")
    assert _line(_remote(OSError("Broken pipe"))) is None  # not a storage failure: the generic failure line
def test_repeated_forwarded_lines_show_once_and_the_rest_as_before():
    """Lines of a quickstart's output: a library warning repeated per batch and per actor (differing in
    quoted, bracketed and parenthesized parts) shows once; the driver's own lines, training steps and
    blank lines all stay."""
    gen, enc, train = ("\x1b[36m(MapWorker(MapBatches(GenerateCandidates)) pid=6874)\x1b[0m ",
                       "\x1b[36m(MapWorker(MapBatches(EncodePairs)) pid=7631)\x1b[0m ", "(RayTrainWorker pid=8224) ")
    truncated = "The following part of your input was truncated because `max_sequence_length` is set to  16 tokens: "
    lines = [
        gen + "[transformers] Token indices sequence length is longer than the specified maximum (25 > 16).",
        gen + truncated + "['in a green garden', 'in a green garden']",
        gen + truncated + "['d down a narrow stone alley at dusk']",
        "2026-12-06 05:20:12,853 INFO pipelines.rounds: round 0 · stage candidates: done in 15.6 s",
        "2026-12-06 05:20:12,853 INFO pipelines.rounds: round 0 · stage candidates: done in 15.6 s",
        enc + "[transformers] Token indices sequence length is longer than the specified maximum (31 > 16).",
        enc + truncated + '["st parked cars [rainy] on a city street"]',
        "",
        train + "[videogpa.train] step 1/6 epoch 0 loss 0.6931 (0.09s/step)",
        train + "[videogpa.train] step 6/6 epoch 1 loss 0.6931 (0.04s/step)",
        train + "",
        train + "",
    ]
    kept = _TerminalFilter(shown=set())
    assert kept("\n".join(lines) + "\n").splitlines() == [lines[i] for i in (0, 1, 3, 4, 7, 8, 9, 10, 11)]
    # with tracebacks shown (--debug) repeats still go
    assert _TerminalFilter(tracebacks=True)("\n".join(lines[:3]) + "\n").splitlines() == lines[:2]


def test_a_bar_redrawn_in_place_reaches_the_terminal_as_it_comes():
    """Ray Data's progress bars on a terminal rewrite one line with carriage returns: they are not held back
    until a newline (which a bar only writes when it closes)."""
    kept = _TerminalFilter()
    assert kept("\rRunning Dataset: 0%|  | 0/6") == "\rRunning Dataset: 0%|  | 0/6"
    assert kept("\rRunning Dataset: 50%|# | 3/6") == "\rRunning Dataset: 50%|# | 3/6"
    assert kept("\n2026-12-06 INFO pipelines.rounds: done\n") == "\n2026-12-06 INFO pipelines.rounds: done\n"
    assert kept("partial") == "" and kept.flush() == "partial"
