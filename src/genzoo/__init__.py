"""genzoo: deep generative models on PyTorch with one interface.

    >>> import genzoo
    >>> model = genzoo.build_model("made", data_shape=(1, 8, 8), hidden_sizes=[64])
    >>> x = model.sample(4)            # (4, 1, 8, 8), values in {0, 1}
    >>> model.log_prob(x).shape        # exact log p(x) in nats
    torch.Size([4])
"""
from genzoo.data import list_datasets, load_dataset
from genzoo.models import GenerativeModel, build_model, list_models

__version__ = "0.1.0"
__all__ = ["GenerativeModel", "build_model", "list_models", "load_dataset", "list_datasets", "load_model", "__version__"]


def load_model(run_dir, checkpoint: str = "best", device="cpu") -> GenerativeModel:
    """The trained model of a run folder (``genzoo train --out RUN_DIR``), in eval mode; see
    ``genzoo.training.load_model``. Imported on first use, so that ``import genzoo`` stays light."""
    from genzoo.training import load_model as _load_model

    return _load_model(run_dir, checkpoint, device)
