"""The analysis's one error type, in a module of its own: the command line registers its commands
without importing pandas, so `lmscale train` never pays for it."""


class AnalysisError(ValueError):
    """Bad input to the analysis; the message is one line and names the file, column or value."""
