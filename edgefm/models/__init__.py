"""Models: the ``ModelSpec`` that describes a model's interface (``spec``, no torch) and checkpoint
loading (``load``, imports torch)."""

from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec, Preprocessing

__all__ = ["InputSpec", "ModelSpec", "OutputSpec", "Preprocessing"]
