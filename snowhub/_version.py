"""The version of snowhub (kept apart so every layer can record it without importing the facade)."""

__version__ = "0.1.0"
