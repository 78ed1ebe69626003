"""meduniverse: one universal medical imaging model distilled from many hospitals' private data."""

__version__ = "0.1.0"
