"""Training with Composer: the ComposerModel, callbacks, the recipe (YAML -> Trainer), export."""
