"""The spatial-transformer studies: the tutorial's STN on MNIST (:mod:`.tutorial`), on MNIST
with elastic and zoom-out copies (:mod:`.deform`), and the STN paper's distorted-MNIST
benchmark (:mod:`.paper`). What they share lives in :mod:`.common` (config, stacks of seeds,
the primary score) and :mod:`.theta` (θ analysis and ablations); the study modules import
those and never one another."""
