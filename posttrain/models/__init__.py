"""Models: the built-in tiny model, loading, saving and LoRA."""
