"""What the miniature experiment (``benchmarks/miniature.py``) runs on: its own synthetic world and
the training of its models.

``world`` (the synthetic world: ``render_clip``, ``CORRUPTIONS``, ``TRAJECTORIES``), ``gfm_training``
(the tiny GFM) and ``base_model`` (the miniature CogVideoX base model). Experiment code, not product:
it uses the public API of ``actors``, ``pipelines`` and ``trainers``, and the product never imports it.
"""
