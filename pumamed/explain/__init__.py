"""Explanations read from the latent space: traversals, masked reconstructions, counterfactuals,
attributions, bias audits and disentanglement metrics."""
