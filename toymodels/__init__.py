"""The small-model simulator: configs, hand-written LoRA, the from-scratch transformer,
synthetic task generators, training, reuse methods (merge and route), and the
pretrained-model loader. Pure library: no printing, no files unless a path is passed in,
no global RNG seeding (see ``theory/__init__.py`` for the notation contract)."""
