"""Evaluation, behind `python -m derivative_animator.evaluate`: the engine (render queue and
evaluator), each baseline's rows, the figures (per level, pass@k), the best-of-n loop shared
with the CLI, and the report. Imports every layer."""
