"""Models: ``builders`` (architectures built from config) apart from ``loading`` (any trained
Keras file in, checked), and ``qat_scope`` (what a saved QAT model needs to load back)."""

from runner.models.loading import load_model, load_pretrained

__all__ = ["load_model", "load_pretrained"]
