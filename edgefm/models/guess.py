"""Guesses made from what a model is built of: its family (cnn, rnn, transformer) from layer or op
types, and its task and preprocessing from its inputs and outputs. No torch here: used for torch
modules and ONNX graphs alike."""

from __future__ import annotations

from typing import Sequence

from edgefm.models.spec import InputSpec, OutputSpec, Preprocessing

RNN = {"LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"}
ATTENTION = {"MultiheadAttention", "Transformer", "TransformerEncoder", "TransformerDecoder",
             "TransformerEncoderLayer", "TransformerDecoderLayer"}
CONV = {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
RNN_OPS = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}
CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"}


def family_of(names: Sequence[str]) -> str:
    """rnn > transformer > cnn, so a CNN front end with an LSTM is an RNN, and a ViT's patch conv a transformer."""
    kinds = set(names)
    if kinds & RNN:
        return "rnn"
    if kinds & ATTENTION or any("Attention" in n for n in kinds):
        return "transformer"
    if kinds & CONV:
        return "cnn"
    return "other"


def family_of_ops(ops: set[str]) -> str:
    """LSTM/GRU → rnn; attention ops, or MatMul with Softmax → transformer; Conv → cnn."""
    if ops & RNN_OPS:
        return "rnn"
    if ops & ATTENTION_OPS or {"MatMul", "Softmax"} <= ops:
        return "transformer"
    if ops & CONV_OPS:
        return "cnn"
    return "other"


def task_and_preprocessing(family: str, inputs: Sequence[InputSpec],
                           outputs: Sequence[OutputSpec]) -> tuple[str, Preprocessing]:
    """A CNN on one NCHW float input with 1 or 3 channels is an image model; logits make it a classifier."""
    logits = any(o.kind in ("logits", "probabilities") for o in outputs)
    image = (family == "cnn" and len(inputs) == 1 and len(inputs[0].shape) == 4
             and inputs[0].dtype.startswith("float") and inputs[0].shape[1] in (1, 3))
    if image:
        h, w = inputs[0].shape[2:]
        size = [h, w] if isinstance(h, int) and isinstance(w, int) else None
        pre = Preprocessing(kind="image", image_size=size, grayscale=inputs[0].shape[1] == 1)
        return ("image-classification" if logits else "unknown"), pre
    return ("classification" if logits else "unknown"), Preprocessing()
