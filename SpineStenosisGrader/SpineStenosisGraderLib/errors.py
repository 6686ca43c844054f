"""User-facing errors: one line that says what went wrong and what to do."""


class SpineStenosisGraderError(Exception):
    """Base class for problems the user can fix; the CLI prints them as one line."""


class InputError(SpineStenosisGraderError):
    """The study cannot be graded as given (wrong shape, orientation, content)."""


class ModelPackageError(SpineStenosisGraderError):
    """A model package is missing, tampered with, or not one of ours."""
