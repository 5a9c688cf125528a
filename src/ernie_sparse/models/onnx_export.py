"""ONNX export for inference (``pip install 'ernie-sparse[onnx]'``).

``export_onnx(model, "model.onnx", length=512)`` writes a graph of a classifier
(logits [B, C]), masked LM (logits [B, N, V]) or span-QA model (logits [B, 2, N]);
``ernie-sparse export RUN_DIR --out DIR --onnx`` does it for a training run.

What the graph is, and why:

- Fixed length. The block layout, the internal positions of global and
  representative tokens (HST) and the random blocks all depend on the number of
  blocks, so one graph serves exactly ``length`` tokens: inputs are ``input_ids``
  and ``attention_mask`` (int64 [batch, length], padded at the end with mask 0),
  plus ``token_type_ids`` for a model with segment embeddings. The batch is dynamic.
  onnxruntime refuses any other length ("Got invalid dimensions for input").
- Frozen layout. The layouts are the model's evaluation layouts for ``length``
  (random blocks drawn once per layer from ``attention.pattern_seed``, as PyTorch's
  eval mode uses them), stored as constants [H or 1, nb, nb] (not as a token mask).
- Attention path: the ``reference`` backend (layout expanded to a token mask, then
  masked softmax attention), whatever the model's ``attention.backend``: it computes
  the same attention with plain tensor ops. ``blocked`` is not exportable (its
  visiting plan and padding branches are Python decisions on the data, and it uses
  in-place ops the exporter lacks). Memory per layer is therefore O(B * H * L^2)
  for an internal length L (length + HST representatives + global padding).
- Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``. The
  ``torch.export`` exporter (``dynamo=True``) refuses the encoder's input checks
  (``int(ids.min())`` and friends are data-dependent). Tracing keeps them out of the
  graph; the one data-dependent branch that changes the math (skip the key mask
  when nothing is masked) is traced on a padded example, so the graph always masks.
  It drops in-place writes that later ops read (HST's first representative was one;
  the encoder now computes it out of place), which the check below catches.
- Checked: onnxruntime runs the graph on the example batch (no padding, half
  padding, one real token) and the export is refused if it differs from PyTorch by
  more than ``TOLERANCE``.
- Block-sparse attention only: Combiner and causal models are refused.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .encoder import Encoder
from .heads import MaskedLM, SequenceClassifier, SpanQA

ONNX_HEADS = (SequenceClassifier, MaskedLM, SpanQA)
OPSET = 17
TOLERANCE = 1e-4  # max |onnx - torch| accepted by the export's own check (fp32)


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote: the file, its fixed length, its inputs, and the
    largest |onnxruntime - PyTorch| on a padded example (None: onnxruntime missing)."""

    path: Path
    length: int
    inputs: tuple[str, ...]
    max_difference: float | None

    def describe(self) -> str:
        size = self.path.stat().st_size / 2**20
        check = (
            "not checked (pip install onnxruntime)"
            if self.max_difference is None
            else f"max |onnx - torch| = {self.max_difference:.1e}"
        )
        return (
            f"onnx: {self.path.name}, inputs {', '.join(self.inputs)} [batch, {self.length}] "
            f"(pad to {self.length}), reference attention, {size:.1f} MiB, {check}"
        )


class _LogitsOnly(nn.Module):
    """The task model with positional inputs and one output, the logits."""

    def __init__(self, native: nn.Module) -> None:
        super().__init__()
        self.native = native

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.native(input_ids, attention_mask, token_type_ids).logits


def native_model(model: nn.Module) -> nn.Module:
    """Our task module: ``model`` itself or, for a transformers class, its ``ernie_sparse``."""
    native = getattr(model, "ernie_sparse", model)
    if not isinstance(native, ONNX_HEADS):
        raise ValueError(
            f"ONNX export handles {', '.join(c.__name__ for c in ONNX_HEADS)} (and their "
            f"Hugging Face classes), not {type(model).__name__}"
        )
    config = native.config
    if config.attention.kind != "sparse" or config.causal:
        kind = "Combiner" if config.attention.kind == "combiner" else "causal"
        raise ValueError(f"ONNX export handles block-sparse attention only, not {kind} attention")
    return native


def require_onnx() -> None:
    """The exporter writes through the ``onnx`` package: say how to get it."""
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ValueError(f"ONNX export needs: pip install 'ernie-sparse[onnx]' ({error})") from None


def check_length(native: nn.Module, length: int) -> None:
    limit = native.config.max_positions
    if not isinstance(length, int) or not 2 <= length <= limit:
        raise ValueError(
            f"ONNX length must be an integer in [2, max_positions={limit}], got {length!r}"
        )


def example_inputs(native: nn.Module, length: int) -> dict[str, torch.Tensor]:
    """Three rows of ``length`` tokens: no padding, half padding, one real token. Padding
    makes tracing take the masked attention path (right for any input) rather than the
    unmasked one; the last row (every local block empty) checks HST's first representative."""
    config = native.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (3, length), generator=generator)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, (length + 1) // 2 :] = 0
    mask[2, 1:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def inference_copy(native: nn.Module) -> nn.Module:
    """A copy in eval mode on the CPU whose encoder uses the ``reference`` attention."""
    frozen = copy.deepcopy(native).cpu().eval()
    for module in frozen.modules():
        if isinstance(module, Encoder):
            module.config.attention.backend = "reference"
    return frozen


def export_onnx(
    model: nn.Module, path: str | Path, *, length: int, opset: int = OPSET
) -> OnnxExport:
    """Write ``model`` (a classifier, masked LM or span-QA model, ours or its transformers
    class) as an ONNX graph for inputs of exactly ``length`` tokens; see the module."""
    require_onnx()
    native = native_model(model)
    check_length(native, length)
    wrapped = _LogitsOnly(inference_copy(native)).eval()
    inputs = example_inputs(native, length)
    with torch.no_grad():
        expected = wrapped(**inputs)  # also draws and caches the layouts for this length
    path = Path(path)
    names = tuple(inputs)
    batch_axis = {name: {0: "batch"} for name in (*names, "logits")}
    with warnings.catch_warnings():
        # Tracing warns at each Python decision on a tensor (the input checks) and the
        # TorchScript exporter announces its deprecation; neither changes the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapped,
            tuple(inputs.values()),
            str(path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=batch_axis,
            opset_version=opset,
            dynamo=False,
        )
    difference = onnx_difference(path, inputs, expected)
    if difference is not None and difference > TOLERANCE:
        raise ValueError(
            f"{path}: onnxruntime differs from PyTorch by {difference:.2e} (> {TOLERANCE:g})"
        )
    return OnnxExport(path, length, names, difference)


def run_onnx(path: str | Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The graph's logits for ``inputs`` (int64 tensors named as the graph's inputs)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: tensor.to(torch.int64).numpy() for name, tensor in inputs.items()}
    (logits,) = session.run(["logits"], feeds)
    return torch.from_numpy(logits)


def onnx_difference(
    path: Path, inputs: dict[str, torch.Tensor], expected: torch.Tensor
) -> float | None:
    """max |onnxruntime - ``expected``| on ``inputs``, or None without onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return float((run_onnx(path, inputs) - expected).abs().max())
