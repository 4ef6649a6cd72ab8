"""The package version (its own module, so the library reads it without importing the package)."""

__version__ = "0.1.0"
