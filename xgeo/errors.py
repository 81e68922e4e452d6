"""User-facing errors. The CLI prints their message (file, what was expected, what was found) without a traceback."""


class XGeoError(Exception):
    """Base of every error caused by input (files, data, configuration, checkpoints) rather than by a bug."""


class DataError(XGeoError):
    """A dataset file or store is missing, corrupt or inconsistent."""


class ChecksumError(DataError):
    """A downloaded or placed file does not match its catalogued md5."""


class CheckpointError(XGeoError):
    """A checkpoint is missing, corrupt, or from another configuration."""


class TrainingError(XGeoError):
    """Training cannot go on (e.g. a NaN or infinite loss); the last good checkpoint is kept."""
