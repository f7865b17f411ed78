"""Models: ``builders`` (architectures built from config) apart from ``loading`` (any trained
file in, checked); ``model_file`` (what a file says it is, read as JSON), ``keras3`` (a Keras 3
model's tf_keras twin), ``saved_model`` (a bare SavedModel), ``tf_keras_graph`` (a graph
flattened for QAT), ``qat_scope`` (what a saved QAT model needs to load back), ``meta`` (the
runner's keys of a model config)."""

from runner.models.loading import load_model, load_pretrained

__all__ = ["load_model", "load_pretrained"]
