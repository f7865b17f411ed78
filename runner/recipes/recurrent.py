"""Recurrent models as the converter sees them: finding LSTM/GRU layers, fixing the batch,
and the unrolled copy (the route TFLite converts without its fused kernel)."""

from __future__ import annotations

from runner.errors import RunnerError

RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D")


def has_recurrent(model) -> bool:
    return any(type(layer).__name__ in RECURRENT for layer in _all_layers(model))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def with_fixed_batch(model, batch_size: int):
    """A copy of ``model`` whose input has a fixed batch, sharing its trained weights' values.

    A recurrent layer with a dynamic batch converts to TensorList ops that the LiteRT builtins
    cannot run; at a fixed batch the converter emits its fused LSTM kernel instead.
    """
    import tf_keras as keras

    inp = keras.Input(
        batch_shape=(batch_size, *model.input_shape[1:]),
        dtype=model.inputs[0].dtype,
        name=model.inputs[0].name.split(":")[0],
    )
    clone = keras.models.clone_model(model, input_tensors=inp)
    clone.set_weights(model.get_weights())
    return clone


RNN_CELLS = ("LSTM", "GRU", "SimpleRNN")


def unrolled(model):
    """A copy of ``model`` with every recurrent layer unrolled (``unroll=True``), same weights.

    The converter then emits plain FULLY_CONNECTED/ADD/LOGISTIC ops per time step instead of its
    fused ``UNIDIRECTIONAL_SEQUENCE_LSTM`` kernel, which drifts from Keras when gates saturate.
    It needs a fixed sequence length.
    """
    import tf_keras as keras

    if len(model.input_shape) > 1 and model.input_shape[1] is None:
        raise RunnerError(
            "the unrolled route needs a fixed sequence length, but the model's input is "
            f"{model.input_shape}; build the model with a fixed length (e.g. Input(shape=(100,)))"
        )

    def unroll(cfg: dict) -> dict:
        return {**cfg, "unroll": True}

    def clone(layer):
        cls, cfg = type(layer).__name__, layer.get_config()
        if cls in RNN_CELLS:
            cfg = unroll(cfg)
        elif cls == "Bidirectional":
            cfg["layer"] = {**cfg["layer"], "config": unroll(cfg["layer"]["config"])}
            if cfg.get("backward_layer"):
                back = cfg["backward_layer"]
                cfg["backward_layer"] = {**back, "config": unroll(back["config"])}
        return layer.__class__.from_config(cfg)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
