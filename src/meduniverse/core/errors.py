"""Errors that name what is wrong: the file, the site or the stage."""


class MeduniverseError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(MeduniverseError):
    """A data file is missing or malformed (the message names the file and the problem)."""


class ConfigError(MeduniverseError):
    """A configuration file is missing or malformed."""


class PrivacyError(MeduniverseError):
    """Private data would leave a site, or the server pool overlaps private data."""


class StageError(MeduniverseError):
    """A federation stage failed (the message names the stage and the site)."""


class DeployError(MeduniverseError):
    """A deployment step cannot proceed (the message names the file, the address or the site)."""
