"""Latent-variable models: p(x) = ∫ p(x|z) p(z) dz, whose ``log_prob`` is a lower bound (the IWAE
bound with thousands of importance samples), and the latent API ``encode``/``decode``/``interpolate``."""
from genzoo.models.latent import gumbel_vae, iwae, vae  # noqa: F401  (registers vae, iwae, gumbel-vae)
from genzoo.models.latent import vqvae  # noqa: F401  (registers vqvae)
