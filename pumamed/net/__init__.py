"""PumaMedNet: the denoising beta-VAE, its training, transfer, evaluation and checkpoints.

Public API::

    from pumamed.net import PumaMedNet, PumaMedNetConfig, load_model, save_checkpoint
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=32, num_classes=4))
    mu, logvar = model.encode(x); x_hat = model.decode(z); out = model(x)  # .recon .mu .logvar .z
    w = model.reconstruction_weights(x); probs = model.predict_proba(x)
    loaded = load_model("models/brain")  # .model .config .metrics .class_names .task .kl_per_dim .card
"""

from pumamed.net.checkpoint import LoadedModel, load_model, load_weight_maps, save_checkpoint
from pumamed.net.model import ClassificationPath, PumaMedNet, PumaMedNetConfig, VAEOutput, count_parameters

__all__ = [
    "ClassificationPath",
    "LoadedModel",
    "PumaMedNet",
    "PumaMedNetConfig",
    "VAEOutput",
    "count_parameters",
    "load_model",
    "load_weight_maps",
    "save_checkpoint",
]
