"""The exercises, one module per notebook (``nbNN.py``), each with an ``EXERCISES`` tuple of
``qlab.course.Exercise``: reference, cases (edge cases included) and the catalogue of common mistakes."""
