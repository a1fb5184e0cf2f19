"""posttrain: an LLM post-training pipeline driven by one recipe file."""

__version__ = "0.1.0"
