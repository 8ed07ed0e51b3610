"""The parts of fine-tuning and linear probing (docs/method.md#fine-tuning) that the classification task
(uniemox.tasks.classify) puts together: the data (shards, splits, label fraction), the
augmentation, the heads, the loss and optimizer recipe, layer-wise lr decay."""
