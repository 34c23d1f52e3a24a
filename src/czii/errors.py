"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class CziiError(Exception):
    """Base class: bad input, named precisely (which run, which file, what was expected)."""


class DataError(CziiError, ValueError):
    """A dataset, run, tomogram or picks file is missing, unreadable or malformed."""


class ConfigError(CziiError, ValueError):
    """A config has an unknown key, a wrong type or an impossible value."""


class SubmissionError(CziiError, ValueError):
    """A submission or solution table is malformed."""


class OutputError(CziiError, OSError):
    """An output cannot be written where it was asked for (exists, wrong kind, no permission, read-only)."""


class BuildError(CziiError):
    """A wheel of the offline Kaggle dataset could not be found, downloaded or built for the target, or
    the dependency closure is inconsistent."""
