"""The engine: every steered forward pass steerlab runs, written once.

- :mod:`~steerlab.engine.generate`: the ``generate`` front door (rows in, results out), which
  hands the rows to a runner; :mod:`~steerlab.engine.rows`: rows, settings and results.
- :mod:`~steerlab.engine.runner`: the runner seam, and the local runner (the fixed and the
  continuous loops over a backend's forward and cache).
- :mod:`~steerlab.engine.plan` / :mod:`~steerlab.engine.handle`: per-row steering compiled to a
  plan, and the handle that applies it at a backend's sites; :mod:`~steerlab.engine.forward`:
  the one steered forward pass.
- :mod:`~steerlab.engine.prefill`, :mod:`~steerlab.engine.layershare`: shared prompt prefixes
  and shared lower layers; :mod:`~steerlab.engine.sampling`, :mod:`~steerlab.engine.batch`.
- :mod:`~steerlab.engine.score`: logit scoring; :mod:`~steerlab.engine.record`: activation
  recording.
"""
