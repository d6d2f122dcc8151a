"""VAE models: MLP, convolutional and linear encoders/decoders with named likelihoods."""

from vaebench.models.likelihoods import Likelihood
from vaebench.models.vae import VAE, build_model, reparameterise

__all__ = ["VAE", "Likelihood", "build_model", "reparameterise"]
