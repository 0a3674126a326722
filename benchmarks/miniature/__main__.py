"""``python -m benchmarks.miniature [--smoke] ...``: the miniature experiment (``experiment.main``)."""

from benchmarks.miniature.experiment import main

if __name__ == "__main__":
    raise SystemExit(main())
