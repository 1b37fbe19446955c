"""The package version (kept apart so every module can import it without cycles)."""

__all__ = ["__version__"]

__version__ = "0.3.0"
