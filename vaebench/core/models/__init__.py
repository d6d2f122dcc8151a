"""VAE models: MLP, convolutional and linear encoders/decoders with named likelihoods, and the
autoregressive families (a gated PixelCNN decoder for images, an RNN sequence VAE for tokens)."""

from vaebench.core.models.likelihoods import Likelihood
from vaebench.core.models.vae import VAE, autoregressive_class, build_model, reparameterise

__all__ = ["VAE", "Likelihood", "autoregressive_class", "build_model", "reparameterise"]
