"""The package's version: one owner, read by the CLI, provenance records and the package face."""

__version__ = "0.1.0"
