"""core: the bottom layer every other imports — config and stage options, artifacts, results, formats, data,
statistics, errors, progress, system info."""

__version__ = "0.1.0"  # edgeq's version (pyproject.toml has the same); here so every layer can name it
