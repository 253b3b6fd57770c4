"""Samplers that work across models: speculative sampling of an autoregressive target with a
cheap draft (``speculative_sample``)."""
from genzoo.sampling.speculative import SpeculativeStats, check_speculative_pair, speculative_sample

__all__ = ["SpeculativeStats", "check_speculative_pair", "speculative_sample"]
