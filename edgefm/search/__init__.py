"""Search over compression recipes and targets, and compress a zoo of models, on Ray.

Ray and Optuna are an optional extra (``pip install edgefm[search]``); they are imported only by the
functions that use them, so ``import edgefm.search`` stays light."""

from edgefm.search.space import Budget, SearchConfig, SearchSpace

__all__ = ["Budget", "SearchConfig", "SearchSpace", "search", "compress_zoo"]


def __getattr__(name: str):
    if name == "search":
        from edgefm.search.driver import search
        return search
    if name == "compress_zoo":
        from edgefm.search.zoo import compress_zoo
        return compress_zoo
    raise AttributeError(f"module 'edgefm.search' has no attribute {name!r}")
