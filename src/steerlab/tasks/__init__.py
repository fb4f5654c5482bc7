"""Task data: prompt sets for steering experiments (see :mod:`steerlab.tasks.prompts`).

Deliberately imports nothing, so ``python -m steerlab.tasks.prompts`` runs without runpy's
"found in sys.modules" warning.
"""
