"""VideoGPA in miniature: the research benchmark's own world, models and experiment.

``world`` (the synthetic world: ``render_clip``, ``CORRUPTIONS``, ``TRAJECTORIES``),
``gfm_training`` (the tiny GFM), ``base_model`` (the miniature CogVideoX base model) and
``experiment`` (``python -m benchmarks.miniature``). Experiment code, not product: it uses the
public API of ``actors``, ``pipelines`` and ``trainers``.
"""
