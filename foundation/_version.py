"""The package version (a leaf module: the CLI and the exports read it without importing the package)."""

__version__ = "0.1.0"
