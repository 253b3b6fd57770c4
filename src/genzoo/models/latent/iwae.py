"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2016).

The VAE's model and encoder, trained with the k-sample importance-weighted bound instead of the
ELBO:

    L_k(x) = E_{z_1..k ~ q(z|x)} [ log (1/k) Σ_i p(x, z_i) / q(z_i|x) ],    L_1 = ELBO ≤ L_k ≤ log p(x),

whose gradient weighs each draw by its normalized importance weight w̃_i = w_i / Σ_j w_j, so the
encoder is no longer pushed to cover only the posterior's mode. With the same evaluation bound
(L_5000) as every latent model. Registered as "iwae": ``build_model("iwae", …, k=50)`` is
``build_model("vae", …, objective="iwae", k=50)``.

Reference: Burda et al., "Importance Weighted Autoencoders" (ICLR 2016), Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genzoo.models.base import register_model
from genzoo.models.latent.vae import VAE, VAEConfig

__all__ = ["IWAE", "IWAEConfig"]


@dataclass
class IWAEConfig(VAEConfig):
    #: the importance-weighted bound (the ELBO is the model "vae")
    objective: Literal["iwae"] = "iwae"
    k: int = 5


@register_model("iwae", IWAEConfig)
class IWAE(VAE):
    """A VAE trained with the k-sample importance-weighted bound (``objective = "iwae"``)."""
