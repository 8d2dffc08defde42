"""PumaMedNet: the denoising beta-VAE, its training, transfer, evaluation and checkpoints."""
