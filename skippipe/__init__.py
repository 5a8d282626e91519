"""SkipPipe: partial and reordered pipeline training of LLMs on heterogeneous networks."""

__version__ = "0.1.0"
