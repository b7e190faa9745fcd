"""The course: lesson files and their learner's stubs, grading a learner's answers, ``check``.

- :mod:`babybitnet.course.lessons`: jupytext lesson files, cells, stubs, keeping lessons/ in sync.
- :mod:`babybitnet.course.grading`: load a learner's lesson and compare its answers with the package.
- :mod:`babybitnet.course.check`: ``python -m babybitnet check N``.
"""

from babybitnet.course.lessons import show_markdown

__all__ = ["show_markdown"]
