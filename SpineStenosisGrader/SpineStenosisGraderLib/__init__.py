"""Qt-free core of SpineStenosisGrader: read, detect, group levels, grade, write.

Importable without Slicer, so that the same code runs in the Slicer module,
on the command line and in the test suite.
"""

__version__ = "0.1.0"
