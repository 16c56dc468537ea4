"""ONNX operators the TensorRT ONNX parser imports, per TensorRT release (data, no logic).

Sources: onnx-tensorrt ``docs/operators.md`` of the 8.5 release (JetPack 5.1, Jetson Xavier) and of the
10.15 release, less the operators that came with opset 23/24 after 10.3 (JetPack 6.x, Jetson Orin).
Lists are of ops marked "Y"; an op absent here is reported as unsupported, which errs on the safe side."""

from __future__ import annotations

_COMMON = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish
Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""

#: Added to the parser between 8.5 and 10.3.
_SINCE_10 = """
BlackmanWindow CastLike DeformConv GroupNormalization HammingWindow HannWindow Hardmax IsInf
LayerNormalization Mish STFT
"""

OPS = {
    "8.5": frozenset(_COMMON.split()),
    "10": frozenset(_COMMON.split()) | frozenset(_SINCE_10.split()),
}

#: Highest ONNX opset the parser accepts.
MAX_OPSET = {"8.5": 17, "10": 20}

#: DequantizeLinear input types the parser imports.
DQ_TYPES = {"8.5": {"int8"}, "10": {"int8", "float8e4m3fn", "int4"}}


def table_for(version: str) -> str:
    """The table key for a TensorRT version string such as '8.5.2' or '10.3.0'; older than 8.5 is refused."""
    try:
        major, minor = (int(p) for p in (version.split(".") + ["0"])[:2])
    except ValueError:
        raise ValueError(f"'{version}' is not a TensorRT version (expected e.g. 10.3 or 8.5.2)") from None
    if major >= 10:
        return "10"
    if (major, minor) >= (8, 5):
        return "8.5"
    raise ValueError(f"TensorRT {version} is older than 8.5, the oldest release edgefm builds for "
                     f"(it needs the execute_async_v3 / named-tensor API)")
