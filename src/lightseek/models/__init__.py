"""Pretrained models: the registry of packaged ones, fetch, and import from GGUF and Hugging Face layouts."""
