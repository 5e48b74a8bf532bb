"""Text classifiers built on lightseek models: pooled hidden-state features and zero-shot
questions to an instruct model. The domain classifier (`lightseek.data.domains`, below the model
layer) reaches them through the `lightseek.domain_modes` entry points, as the model layer
reaches quantized checkpoints."""
