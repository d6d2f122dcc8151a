"""VAE models: MLP, convolutional and linear encoders/decoders with named likelihoods."""

from vaebench.core.models.likelihoods import Likelihood
from vaebench.core.models.vae import VAE, build_model, reparameterise

__all__ = ["VAE", "Likelihood", "build_model", "reparameterise"]
