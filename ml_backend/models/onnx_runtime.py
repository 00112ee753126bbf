"""``encoder.runtime: onnx``: a text encoder's torch network exported at load time and run in ONNX Runtime.

Nothing is downloaded: the graph is traced from the network already loaded (from a PyPI package, a folder or the
hub, as for torch), in memory, in about a second for MiniLM, so there is no exported file to keep in step with the
weights. onnxruntime and onnx (the exporter needs it) are an optional extra, imported only when a config asks.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType

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

    def __init__(self, network: nn.Module, example: Mapping[str, torch.Tensor]):
        ort = _import("onnxruntime")
        _import("onnx")
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
                opset_version=17,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: tokens[name].numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run([self.OUTPUT], feeds)[0])
