"""The errors the model package raises for bad input; torch-free, so scripts can catch them without loading torch."""


class WeightsError(ValueError):
    """A weights file that does not fit the model (or is not a weights file). The message names the file."""


class LeYOLOImportError(WeightsError):
    """A file that is not a LeYOLO checkpoint, or one that does not fit the model. The message names the file."""
