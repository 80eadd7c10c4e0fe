"""The import every scene's math header makes (`from derivative_animator.parsing import
typed_line`): the scenes read their own f and f' with the project's parser when they run.
It lives in `math.parsing`; this path stays because the dataset's scenes, and every model
trained on them, write it (docs/decisions/0002-typed-math-header.md)."""

from derivative_animator.math.parsing import typed_line

__all__ = ["typed_line"]
