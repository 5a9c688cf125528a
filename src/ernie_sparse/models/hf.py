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
is saved once and stays tied after loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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

from .config import ModelConfig
from .encoder import Embeddings, Encoder
from .heads import MaskedLM, MultipleChoice, SequenceClassifier, SpanQA, TaskOutput
from .pretrained import ERNIE_SPARSE_MODEL_TYPE


class ErnieSparseConfig(PreTrainedConfig):
    """Our ModelConfig (as a dict, under ``model``) plus transformers' task settings
    (``num_labels`` / ``id2label`` for classification)."""

    model_type = ERNIE_SPARSE_MODEL_TYPE

    model: dict | None = None  # ModelConfig.to_dict(): sizes, pattern, HST, SAOR

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.model, ModelConfig):
            self.model = self.model.to_dict()
        if self.model is not None:
            self.model = ModelConfig.from_dict(self.model).to_dict()  # refuse bad fields now
        super().__post_init__(**kwargs)

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


@dataclass
class ErnieSparseModelOutput(BaseModelOutputWithPooling):
    """``last_hidden_state`` [B, n, d], ``pooler_output`` [B, d] (per hst.pooling) and,
    with HST, the representatives [B, m, d] and their mask [B, m]."""

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

    def _check_unsupported(self, kwargs: dict[str, Any]) -> None:
        """Refuse transformers options we cannot honour instead of ignoring them."""
        for name in ("output_attentions", "output_hidden_states"):
            if kwargs.pop(name, None):
                raise ValueError(f"{type(self).__name__} does not support {name}=True")
        if kwargs.pop("return_dict", None) is False:
            raise ValueError(f"{type(self).__name__} always returns a ModelOutput (return_dict)")
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected {', '.join(kwargs)}")


class ErnieSparseModel(ErnieSparsePreTrainedModel):
    """The encoder alone: per-token states, pooled state, HST representatives."""

    def __init__(self, config: ErnieSparseConfig) -> None:
        super().__init__(config)
        self.encoder = Encoder(config.to_model_config())
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
    ) -> ErnieSparseModelOutput:
        self._check_unsupported(kwargs)
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        return ErnieSparseModelOutput(
            last_hidden_state=out.hidden_states,
            pooler_output=out.pooled,
            attention_mask=out.attention_mask,
            representatives=out.representatives,
            representative_mask=out.representative_mask,
        )


class _TaskModel(ErnieSparsePreTrainedModel):
    """A native head under ``self.ernie_sparse``; subclasses name it and shape the output."""

    native_class: type[nn.Module]

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
    ) -> TaskOutput:
        self._check_unsupported(kwargs)
        return self.ernie_sparse(input_ids, attention_mask, token_type_ids, labels)


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
    ) -> MaskedLMOutput:
        out = self._run(input_ids, attention_mask, token_type_ids, labels, kwargs)
        return MaskedLMOutput(loss=out.loss, logits=out.logits)


class ErnieSparseForSequenceClassification(_TaskModel):
    """SequenceClassifier over the pooled state: logits [B, num_labels] (NLL loss)."""

    def _build_native(self, config: ErnieSparseConfig) -> nn.Module:
        if config.num_labels < 2:
            raise ValueError(
                f"num_labels={config.num_labels}: regression heads are not supported "
                "(classification needs num_labels >= 2)"
            )
        return SequenceClassifier(config.to_model_config(), config.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        out = self._run(input_ids, attention_mask, token_type_ids, labels, kwargs)
        return SequenceClassifierOutput(loss=out.loss, logits=out.logits)


class ErnieSparseForQuestionAnswering(_TaskModel):
    """SpanQA: start / end logits [B, n]; padding gets the lowest logit."""

    native_class = SpanQA

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput:
        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions, or neither")
        labels = None
        if start_positions is not None:
            labels = torch.stack([start_positions, end_positions], dim=1)  # [B, 2]
        out = self._run(input_ids, attention_mask, token_type_ids, labels, kwargs)
        start, end = out.logits.unbind(1)  # each [B, n]
        return QuestionAnsweringModelOutput(loss=out.loss, start_logits=start, end_logits=end)


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
    ) -> MultipleChoiceModelOutput:
        out = self._run(input_ids, attention_mask, token_type_ids, labels, kwargs)
        return MultipleChoiceModelOutput(loss=out.loss, logits=out.logits)


AUTO_CLASSES = (
    (AutoModel, ErnieSparseModel),
    (AutoModelForMaskedLM, ErnieSparseForMaskedLM),
    (AutoModelForSequenceClassification, ErnieSparseForSequenceClassification),
    (AutoModelForQuestionAnswering, ErnieSparseForQuestionAnswering),
    (AutoModelForMultipleChoice, ErnieSparseForMultipleChoice),
)


def register() -> None:
    """Make the Auto classes resolve ``model_type: ernie_sparse`` to ours (idempotent)."""
    AutoConfig.register(ERNIE_SPARSE_MODEL_TYPE, ErnieSparseConfig, exist_ok=True)
    for auto_class, model_class in AUTO_CLASSES:
        auto_class.register(ErnieSparseConfig, model_class, exist_ok=True)
