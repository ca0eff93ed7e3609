"""Training with Composer: composer_model (ComposerNanoOCR), callbacks (ours), config (YAML -> validated dict),
builders (YAML name -> Composer/our object), build (data, tokenizer, model, Trainer), memory (CPU malloc
tuning), recipe (train, final eval, main), export."""
