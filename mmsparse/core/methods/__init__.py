"""The training methods built on the kernel, as pure functions and small state objects of
torch tensors: AST (:mod:`.ast`, :mod:`.correction`), Chase (:mod:`.chase`, :mod:`.dst`),
Spartan (:mod:`.spartan`, :mod:`.soft_topk`), Sparse Cocktail's schedules
(:mod:`.schedules`), layer-wise density allocation (:mod:`.allocation`), distillation losses
(:mod:`.distill`), network interpolation (:mod:`.interpolation`) and the per-pattern mask
sources of co-training (:mod:`.mask_sources`). The mmengine hooks in
``mmsparse.engine.hooks`` only adapt these to the runner."""
