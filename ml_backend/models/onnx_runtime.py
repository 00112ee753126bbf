"""``encoder.runtime: onnx``: a text encoder's torch network exported at load time and run in ONNX Runtime.

Nothing is downloaded: the graph is traced from the network already loaded (from a PyPI package, a folder or the
hub, as for torch), in memory, in about a second for MiniLM, so there is no exported file to keep in step with the
weights. onnxruntime and onnx (the exporter needs it) are an optional extra, imported only when a config asks.

With ``quantize: int8`` every MatMul by a weight is rewritten to int8 with a scale per token (see
:func:`quantize_per_token`), so that, unlike torch's dynamic quantization, a vector does not depend on its batch.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

INSTALL_HINT = "encoder.runtime: onnx needs onnxruntime and onnx: pip install 'al-ml-backend[onnx]'"


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({module} is not installed)") from e


class _HiddenStates(nn.Module):
    """The network with positional inputs (what the exporter traces) and the last hidden state as its output."""

    def __init__(self, network: nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.network, self.input_names = network, list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.network(**dict(zip(self.input_names, inputs, strict=True))).last_hidden_state


class OnnxEncoderNetwork:
    """Tokenizer output -> last hidden state ``(batch, seq, dim)``, computed by ONNX Runtime on the CPU.

    ORT's intra-op threads are torch's thread count when the encoder is loaded (the product's ``TORCH_THREADS``,
    set before any encoder loads), so switching the runtime does not change how many cores a worker takes.
    """

    OUTPUT = "last_hidden_state"

    #: opset of the exported graph (ReduceMax takes its axes as an attribute up to 17)
    OPSET = 17

    def __init__(self, network: nn.Module, example: Mapping[str, torch.Tensor], int8: bool = False):
        ort = _import("onnxruntime")
        onnx = _import("onnx")
        self.input_names = list(example)
        axes = {name: {0: "batch", 1: "sequence"} for name in [*self.input_names, self.OUTPUT]}
        graph = io.BytesIO()
        with warnings.catch_warnings():
            # torch recommends its newer exporter (which needs onnxscript besides); the tracer warns that Python
            # conditions on shapes become constants: the example is padded so that the attention mask is traced,
            # and the tests compare ORT with torch on unpadded, padded and longer batches
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _HiddenStates(network.eval(), self.input_names),
                tuple(example.values()),
                graph,
                input_names=self.input_names,
                output_names=[self.OUTPUT],
                dynamic_axes=axes,
                opset_version=self.OPSET,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        model = onnx.load_from_string(graph.getvalue())
        if int8 and quantize_per_token(model) == 0:  # never serve fp32 vectors under the int8 fingerprint
            raise ValueError(f"encoder.quantize: int8 found no MatMul by a weight to quantize in {type(network)}")
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: tokens[name].numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run([self.OUTPUT], feeds)[0])


def quantize_per_token(model: Any) -> int:
    """Rewrite, in place, every MatMul by a 2-D weight of an ONNX ``model`` to an int8 MatMulInteger; returns how many.

    Weights: symmetric int8, one scale per output column. Activations: symmetric int8 with one scale per token
    (row), computed on the fly from the token's largest absolute value, stored as uint8 with zero point 128 (the
    u8 x s8 product is what the CPU's int8 dot-product instructions compute). A token's scale depends on that token
    alone, so a vector no longer depends on the texts batched with it or on their padding, which is what keeps
    torch's ``quantize_dynamic`` (one scale per batch) from being the default. Attention, layer norms and GELU stay
    fp32.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    constants = {"q/127": np.float32(127.0), "q/eps": np.float32(1e-12), "q/128": np.float32(128.0)}
    graph.initializer.extend(numpy_helper.from_array(np.array(v), k) for k, v in constants.items())
    graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), "q/zero"))
    nodes, quantized = [], 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)  # (in, out)
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
        p, x = f"q{quantized}/", node.input[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.round(w / w_scale).astype(np.int8), p + "w"),
                numpy_helper.from_array(w_scale.astype(np.float32), p + "w_scale"),
            ]
        )
        nodes += [
            helper.make_node("Abs", [x], [p + "abs"]),
            helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1),
            helper.make_node("Div", [p + "max", "q/127"], [p + "scale0"]),
            helper.make_node("Max", [p + "scale0", "q/eps"], [p + "scale"]),  # an all-zero token
            helper.make_node("Div", [x, p + "scale"], [p + "scaled"]),
            helper.make_node("Round", [p + "scaled"], [p + "rounded"]),  # in [-127, 127]
            helper.make_node("Add", [p + "rounded", "q/128"], [p + "shifted"]),
            helper.make_node("Cast", [p + "shifted"], [p + "x_u8"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [p + "x_u8", p + "w", "q/zero"], [p + "int32"]),
            helper.make_node("Cast", [p + "int32"], [p + "float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "float", p + "w_scale"], [p + "by_column"]),
            helper.make_node("Mul", [p + "by_column", p + "scale"], [node.output[0]]),
        ]
        quantized += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [w for w in graph.initializer if w.name in used]  # the fp32 weights go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return quantized
