"""Distillation: the DataDistiller (classify -> a domain expert generates -> the base model refines)
and knowledge distillation between models that share a tokenizer."""
