"""Framework-neutral parts shared by all three GPTs: data, tokenizers, config, init, checkpoints."""
