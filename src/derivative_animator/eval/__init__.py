"""Evaluation: the render queue and evaluator behind `python -m derivative_animator.evaluate`,
the best-of-n verification loop shared with the CLI, and the report. Imports every layer."""
