"""Hugging Face transformers integration (``pip install 'ernie-sparse[hf]'``).

The ``ErnieSparse*`` classes are ``PreTrainedModel`` shells around our native
modules (``Encoder``, ``MaskedLM``, ``SequenceClassifier``, ``SpanQA``,
``MultipleChoice``): no second implementation of the network. ``register()``
(run by ``import ernie_sparse`` when transformers is installed) makes
``AutoConfig`` / ``AutoModel`` / ``AutoModelFor*`` resolve ``model_type:
ernie_sparse`` to them.

Weight names: the base model holds the encoder as ``encoder.*``; task models
hold the native head as ``ernie_sparse.*`` (``ernie_sparse.encoder.*`` +
the head's own), so a task model loads from a base checkpoint and back, as with
BERT. The MLM decoder is the word embedding matrix itself (not a copy), so it
is saved once and stays tied after loading. With ``use_pooler`` the base model
has BERT's pooler (``pooler.dense.*``: dense + tanh on the pooled state), which
``convert`` copies from a BERT checkpoint that has one.

Hugging Face conventions (so ``Trainer`` and ``pipeline`` work):

- ``return_dict=False`` returns ``ModelOutput.to_tuple()`` (None fields left out).
- ``output_hidden_states=True``: a tuple of ``num_layers + 1`` states [B, n, d], one
  per input token: the embeddings, the input of each later layer, and the last
  hidden state (after the final LayerNorm of pre-LN models). With HST an entry is
  what the next layer reads (after the previous layer's hierarchical attention).
- ``output_attentions=True`` is refused: block-sparse attention never forms the
  attention matrix.
- ``token_type_ids`` of all zeros (what BERT-style tokenizers send) are dropped for a
  model without segment embeddings (``type_vocab_size=0``); other values are refused.
- ``num_items_in_batch`` (``Trainer``'s loss kwarg): the loss is the summed NLL of
  the batch divided by it, so gradient accumulation averages over all labelled
  items of the optimizer step (QA: over start and end of each item). The base
  model has no loss and ignores it.
- ``attn_implementation`` (``from_pretrained(..., attn_implementation="blocked")``,
  ``set_attn_implementation``) picks ``ModelConfig.attention.backend``: one of
  ``auto``, ``reference``, ``blocked``, ``flex``, ``fused``; anything else (``eager``,
  ``sdpa``, ``flash_attention_2``: dense attention) is refused, never swapped in.
- ``gradient_checkpointing_enable()`` / ``activation_checkpointing_enable()`` set
  ``Encoder.gradient_checkpointing`` (each sparse layer recomputed in backward,
  always non-reentrant; ``every_n_layers`` and checkpoint kwargs are not used).

Pipelines: ``fill-mask``, ``text-classification`` and ``feature-extraction`` are
transformers' own; transformers 5 dropped ``question-answering``, so ``register()``
adds ``extractive-question-answering`` (models.hf_pipelines: sliding windows over
long contexts through the tokenizer's ``doc_stride``). ONNX: models.onnx_export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)

from ..attention.dispatch import BACKENDS
from .config import ModelConfig
from .encoder import Embeddings, Encoder
from .heads import (
    IGNORE_INDEX,
    MaskedLM,
    MultipleChoice,
    SequenceClassifier,
    SpanQA,
    TaskOutput,
)
from .pretrained import ERNIE_SPARSE_MODEL_TYPE

# What ``attn_implementation`` may name: ModelConfig.attention.backend's choices.
ATTENTION_BACKENDS = ("auto", *BACKENDS)


class ErnieSparseConfig(PreTrainedConfig):
    """Our ModelConfig (as a dict, under ``model``) plus transformers' task settings
    (``num_labels`` / ``id2label`` for classification)."""

    model_type = ERNIE_SPARSE_MODEL_TYPE

    model: dict | None = None  # ModelConfig.to_dict(): sizes, pattern, HST, SAOR
    use_pooler: bool = False  # base model: BERT's pooler (dense + tanh) on the pooled state

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.model, ModelConfig):
            self.model = self.model.to_dict()
        if self.model is not None:
            # Refuse bad fields now; an older config.json's flat attention keys move here.
            self.model = ModelConfig.from_dict(self.model).to_dict()
        super().__post_init__(**kwargs)
        if self._attn_implementation is not None:  # ErnieSparseConfig(attn_implementation=...)
            resolve_attention_backend(self, self._attn_implementation)

    def to_model_config(self) -> ModelConfig:
        if self.model is None:
            raise ValueError("ErnieSparseConfig has no model section (pass model=ModelConfig)")
        return ModelConfig.from_dict(self.model)

    # The names transformers' utilities read (read-only: change ``model`` instead).
    @property
    def vocab_size(self) -> int:
        return self._model_field("vocab_size")

    @property
    def hidden_size(self) -> int:
        return self._model_field("hidden_size")

    @property
    def num_hidden_layers(self) -> int:
        return self._model_field("num_layers")

    @property
    def num_attention_heads(self) -> int:
        return self._model_field("num_heads")

    @property
    def initializer_range(self) -> float:
        return self._model_field("initializer_range")

    def _model_field(self, name: str) -> Any:
        if self.model is None:  # AttributeError keeps hasattr / getattr(..., default) working
            raise AttributeError(f"ErnieSparseConfig without a model section has no {name}")
        return self.model[name]


def resolve_attention_backend(config: ErnieSparseConfig, requested: Any) -> str:
    """``attn_implementation`` -> ModelConfig.attention.backend (written into
    ``config.model``); None keeps the configured one. Anything but our backends is
    refused: transformers' kernels would silently replace the sparse pattern."""
    if requested is None:
        return config.model["attention"]["backend"] if config.model is not None else "auto"
    if not isinstance(requested, str) or requested not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attn_implementation={requested!r} is not an ERNIE-Sparse attention backend; "
            f"choose one of {', '.join(ATTENTION_BACKENDS)} (transformers' eager / sdpa / flash "
            "kernels are dense attention and would drop the sparse pattern)"
        )
    if config.model is not None:
        attention = {**config.model["attention"], "backend": requested}
        config.model = {**config.model, "attention": attention}
    return requested


@dataclass
class ErnieSparseModelOutput(BaseModelOutputWithPooling):
    """``last_hidden_state`` [B, n, d], ``pooler_output`` [B, d] (per hst.pooling, then
    the pooler with ``use_pooler``), ``hidden_states`` when asked and, with HST, the
    representatives [B, m, d] and their mask [B, m]."""

    attention_mask: torch.Tensor | None = None
    representatives: torch.Tensor | None = None
    representative_mask: torch.Tensor | None = None


class ErnieSparsePreTrainedModel(PreTrainedModel):
    config_class = ErnieSparseConfig
    base_model_prefix = "ernie_sparse"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # sets Encoder.gradient_checkpointing

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """As our modules initialize themselves (Linear, Embedding, LayerNorm by the base)."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Embeddings) and module.representative is not None:
            init.normal_(module.representative, mean=0.0, std=std)
        elif isinstance(module, MaskedLM):
            init.zeros_(module.bias)

    # --- attn_implementation: one of our backends, never transformers' dense kernels ---

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: Any, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        return resolve_attention_backend(self.config, attn_implementation)

    def get_correct_attn_implementation(
        self, requested_attention: Any, is_init_check: bool = False
    ) -> str:
        return resolve_attention_backend(self.config, requested_attention)

    def set_attn_implementation(
        self, attn_implementation: Any, allow_all_kernels: bool = False
    ) -> None:
        """Switch the attention backend of the built model (every encoder in it)."""
        backend = resolve_attention_backend(self.config, attn_implementation)
        self.config._attn_implementation_internal = backend
        for module in self.modules():
            if isinstance(module, Encoder):
                module.config.attention.backend = backend

    # --- forward options ---

    def _options(self, kwargs: dict[str, Any]) -> _Options:
        """transformers' forward options; those we cannot honour are refused, not ignored."""
        config = self.config
        if _pick(kwargs, "output_attentions", config.output_attentions):
            raise ValueError(
                f"{type(self).__name__} does not support output_attentions=True "
                "(block-sparse attention never forms the attention matrix)"
            )
        options = _Options(
            hidden_states=bool(_pick(kwargs, "output_hidden_states", config.output_hidden_states)),
            return_dict=bool(_pick(kwargs, "return_dict", config.return_dict)),
            num_items_in_batch=kwargs.pop("num_items_in_batch", None),
        )
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected {', '.join(kwargs)}")
        return options

    def _segments(self, token_type_ids: torch.Tensor | None) -> torch.Tensor | None:
        """All-zero token types mean one segment: dropped where the model has no segment
        embeddings (the encoder refuses any it is given, as it does other values)."""
        no_segments = self.config.model["type_vocab_size"] == 0
        if no_segments and token_type_ids is not None and not bool(token_type_ids.any()):
            return None
        return token_type_ids


@dataclass
class _Options:
    hidden_states: bool  # output_hidden_states
    return_dict: bool
    num_items_in_batch: torch.Tensor | int | None  # Trainer's count of labelled items


def _pick(kwargs: dict[str, Any], name: str, default: Any) -> Any:
    value = kwargs.pop(name, None)
    return default if value is None else value


@contextlib.contextmanager
def _layer_inputs(encoder: Encoder, enabled: bool) -> Iterator[dict[int, torch.Tensor]]:
    """Collects the internal sequence [B, L, d] entering each layer's sparse attention
    (layer 0: the embeddings' output), with pre-hooks removed on exit (so the recompute
    of gradient checkpointing, in backward, records nothing)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    if enabled:
        for index, layer in enumerate(encoder.layers):

            def hook(module: nn.Module, args: tuple, index: int = index) -> None:
                captured.setdefault(index, args[0])

            handles.append(layer.attention.register_forward_pre_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _hidden_states(
    encoder: Encoder, captured: dict[int, torch.Tensor], last: torch.Tensor
) -> tuple[torch.Tensor, ...] | None:
    """The captured layer inputs at the input tokens' positions, then ``last`` [B, n, d]."""
    if not captured:
        return None
    positions = encoder.plan(last.shape[1]).token_positions.to(last.device)
    states = [captured[index].index_select(1, positions) for index in range(len(encoder.layers))]
    return (*states, last)  # each [B, n, d]


class ErnieSparsePooler(nn.Module):
    """BERT's pooler: dense + tanh on the pooled state [B, d]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(pooled))


class ErnieSparseModel(ErnieSparsePreTrainedModel):
    """The encoder alone: per-token states, pooled state, HST representatives.

    ``pooler_output``: the pooled state (per hst.pooling; ``cls``: the first token),
    through BERT's pooler (dense + tanh) when ``config.use_pooler``.
    """

    accepts_loss_kwargs = False  # no loss: Trainer's num_items_in_batch is ignored

    def __init__(self, config: ErnieSparseConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config.to_model_config())
        self.pooler = ErnieSparsePooler(config.hidden_size) if config.use_pooler else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings.word

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embeddings.word = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ErnieSparseModelOutput | tuple:
        options = self._options(kwargs)
        token_type_ids = self._segments(token_type_ids)
        with _layer_inputs(self.encoder, options.hidden_states) as captured:
            out = self.encoder(input_ids, attention_mask, token_type_ids)
        pooled = out.pooled if self.pooler is None else self.pooler(out.pooled)
        output = ErnieSparseModelOutput(
            last_hidden_state=out.hidden_states,
            pooler_output=pooled,
            hidden_states=_hidden_states(self.encoder, captured, out.hidden_states),
            attention_mask=out.attention_mask,
            representatives=out.representatives,
            representative_mask=out.representative_mask,
        )
        return _returned(output, options.return_dict)


class _TaskModel(ErnieSparsePreTrainedModel):
    """A native head under ``self.ernie_sparse``; subclasses name it and shape the output."""

    native_class: type[nn.Module]
    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch
    label_entries_per_item = 1  # labels entries per counted item (QA: start and end)

    def __init__(self, config: ErnieSparseConfig) -> None:
        super().__init__(config)
        self.ernie_sparse = self._build_native(config)
        self.post_init()

    def _build_native(self, config: ErnieSparseConfig) -> nn.Module:
        return self.native_class(config.to_model_config())

    def get_input_embeddings(self) -> nn.Embedding:
        return self.ernie_sparse.encoder.embeddings.word

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.ernie_sparse.encoder.embeddings.word = value

    def _run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> tuple[TaskOutput, dict[str, Any], bool]:
        """The native head's output, the HF output fields (loss, hidden_states), and
        whether to return a ModelOutput."""
        options = self._options(kwargs)
        token_type_ids = self._segments(token_type_ids)
        encoder = self.ernie_sparse.encoder
        with _layer_inputs(encoder, options.hidden_states) as captured:
            out = self.ernie_sparse(input_ids, attention_mask, token_type_ids, labels)
        fields = {
            "loss": self._loss(out, labels, options.num_items_in_batch),
            "hidden_states": _hidden_states(encoder, captured, out.encoder.hidden_states),
        }
        return out, fields, options.return_dict

    def _loss(
        self,
        out: TaskOutput,
        labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor | None:
        """The head's mean NLL, or with ``num_items_in_batch`` the summed NLL over it."""
        if labels is None or num_items_in_batch is None:
            return out.loss
        classes = out.logits.shape[-1]
        summed = F.cross_entropy(
            out.logits.reshape(-1, classes).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return summed / (num_items_in_batch * self.label_entries_per_item)


def _returned(output: Any, return_dict: bool) -> Any:
    return output if return_dict else output.to_tuple()


class ErnieSparseForMaskedLM(_TaskModel):
    """MaskedLM: logits [B, n, V] from the word-embedding-tied decoder."""

    native_class = MaskedLM

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput | tuple:
        out, fields, return_dict = self._run(
            input_ids, attention_mask, token_type_ids, labels, kwargs
        )
        return _returned(MaskedLMOutput(logits=out.logits, **fields), return_dict)


class ErnieSparseForSequenceClassification(_TaskModel):
    """SequenceClassifier over the pooled state: logits [B, num_labels] (NLL loss)."""

    def _build_native(self, config: ErnieSparseConfig) -> nn.Module:
        if config.num_labels < 2:
            raise ValueError(
                f"num_labels={config.num_labels}: regression heads are not supported "
                "(classification needs num_labels >= 2)"
            )
        if config.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"problem_type={config.problem_type!r} is not supported: the loss is the "
                "single-label NLL (problem_type='single_label_classification')"
            )
        return SequenceClassifier(config.to_model_config(), config.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        out, fields, return_dict = self._run(
            input_ids, attention_mask, token_type_ids, labels, kwargs
        )
        return _returned(SequenceClassifierOutput(logits=out.logits, **fields), return_dict)


class ErnieSparseForQuestionAnswering(_TaskModel):
    """SpanQA: start / end logits [B, n]; padding gets the lowest logit."""

    native_class = SpanQA
    label_entries_per_item = 2  # num_items_in_batch counts examples; each has start and end

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput | tuple:
        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions, or neither")
        labels = None
        if start_positions is not None:
            labels = torch.stack([start_positions, end_positions], dim=1)  # [B, 2]
        out, fields, return_dict = self._run(
            input_ids, attention_mask, token_type_ids, labels, kwargs
        )
        start, end = out.logits.unbind(1)  # each [B, n]
        output = QuestionAnsweringModelOutput(start_logits=start, end_logits=end, **fields)
        return _returned(output, return_dict)


class ErnieSparseForMultipleChoice(_TaskModel):
    """MultipleChoice: inputs [B, choices, n] -> logits [B, choices]."""

    native_class = MultipleChoice

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MultipleChoiceModelOutput | tuple:
        out, fields, return_dict = self._run(
            input_ids, attention_mask, token_type_ids, labels, kwargs
        )
        return _returned(MultipleChoiceModelOutput(logits=out.logits, **fields), return_dict)


AUTO_CLASSES = (
    (AutoModel, ErnieSparseModel),
    (AutoModelForMaskedLM, ErnieSparseForMaskedLM),
    (AutoModelForSequenceClassification, ErnieSparseForSequenceClassification),
    (AutoModelForQuestionAnswering, ErnieSparseForQuestionAnswering),
    (AutoModelForMultipleChoice, ErnieSparseForMultipleChoice),
)


def register() -> None:
    """Make the Auto classes resolve ``model_type: ernie_sparse`` to ours, and add the
    ``extractive-question-answering`` pipeline (models.hf_pipelines); idempotent."""
    from .hf_pipelines import register_pipelines

    AutoConfig.register(ERNIE_SPARSE_MODEL_TYPE, ErnieSparseConfig, exist_ok=True)
    for auto_class, model_class in AUTO_CLASSES:
        auto_class.register(ErnieSparseConfig, model_class, exist_ok=True)
    register_pipelines()
