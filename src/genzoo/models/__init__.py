"""Model families; importing this package registers every model."""
from genzoo.models import autoregressive  # noqa: F401  (registers fvsbn, nade, made)
from genzoo.models import flows  # noqa: F401  (registers nice, realnvp, glow)
from genzoo.models import latent  # noqa: F401  (registers vae, iwae, gumbel-vae, vqvae)
from genzoo.models.base import GenerativeModel, build_model, list_models, register_model

__all__ = ["GenerativeModel", "build_model", "list_models", "register_model"]
