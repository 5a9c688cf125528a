"""Extractive question answering as a transformers pipeline, for long contexts.

transformers 5 removed its ``question-answering`` pipeline (``pipeline("question-
answering")`` now raises, pointing at chat models). ``import ernie_sparse``
registers this one as ``extractive-question-answering``; it serves any
``AutoModelForQuestionAnswering`` (ours and transformers' own)::

    qa = pipeline("extractive-question-answering", model="hf/trivia")
    qa(question="who?", context=long_text, max_seq_len=512, doc_stride=128)
    # {"score": 0.71, "start": 1032, "end": 1040, "answer": "..."}

Long contexts go through the tokenizer's sliding windows, as transformers 4's
pipeline did: each input is ``question + context window`` of at most ``max_seq_len``
tokens, consecutive windows share ``doc_stride`` context tokens. Each window is
scored as there: softmax of the start and of the end logits over the window's context
tokens, a span's score is p(start) * p(end) for end >= start and at most
``max_answer_len`` tokens (transformers' own ``select_starts_ends``); the answer is
the best span over all windows, cut from the context by the tokens' character offsets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines.document_question_answering import select_starts_ends

QA_TASK = "extractive-question-answering"
DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_MAX_ANSWER_LEN = 15
WINDOW_FIELDS = ("context_mask", "offsets", "context", "is_last")  # passed on to postprocess


class ExtractiveQuestionAnsweringPipeline(ChunkPipeline):
    """question + context -> {"score", "start", "end", "answer"} (``top_k`` > 1: a list)."""

    def _sanitize_parameters(
        self,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        max_answer_len: int | None = None,
        top_k: int | None = None,
        **unknown: Any,
    ) -> tuple[dict, dict, dict]:
        if unknown:
            raise TypeError(f"{QA_TASK} got unexpected {', '.join(unknown)}")
        preprocess = {"max_seq_len": max_seq_len, "doc_stride": doc_stride}
        postprocess = {"max_answer_len": max_answer_len, "top_k": top_k}
        for name, value in {**preprocess, **postprocess}.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return _given(preprocess), {}, _given(postprocess)

    def __call__(self, question: str | list[str], context: str | list[str], **kwargs: Any):
        if isinstance(question, str) != isinstance(context, str):
            raise ValueError("give question and context both as strings or both as lists")
        if isinstance(question, str):
            return super().__call__({"question": question, "context": context}, **kwargs)
        if len(question) != len(context):
            raise ValueError(f"{len(question)} questions for {len(context)} contexts")
        pairs = [{"question": q, "context": c} for q, c in zip(question, context, strict=True)]
        return super().__call__(pairs, **kwargs)

    def preprocess(self, inputs: dict[str, str], max_seq_len: int | None = None, doc_stride=None):
        question, context = inputs["question"], inputs["context"]
        if not question.strip() or not context.strip():
            raise ValueError("question and context must both be non-empty text")
        max_seq_len = max_seq_len or min(self.tokenizer.model_max_length, DEFAULT_MAX_SEQ_LEN)
        doc_stride = min(max_seq_len // 2, 128) if doc_stride is None else doc_stride
        encoded = self.tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        windows = len(encoded["input_ids"])
        names = [name for name in self.tokenizer.model_input_names if name in encoded]
        for window in range(windows):
            sequence_ids = encoded.sequence_ids(window)
            yield {
                **{name: torch.tensor([encoded[name][window]]) for name in names},  # [1, n]
                "context_mask": [sequence == 1 for sequence in sequence_ids],
                "offsets": encoded["offset_mapping"][window],
                "context": context,
                "is_last": window == windows - 1,
            }

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        passed = {name: model_inputs.pop(name) for name in WINDOW_FIELDS}
        output = self.model(**model_inputs)
        return {
            "start_logits": output.start_logits,  # [1, n]
            "end_logits": output.end_logits,
            "attention_mask": model_inputs.get("attention_mask"),
            **passed,
        }

    def postprocess(
        self,
        all_outputs: list[dict[str, Any]],
        max_answer_len: int = DEFAULT_MAX_ANSWER_LEN,
        top_k: int = 1,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        answers = []
        for window in all_outputs:
            answers.extend(window_answers(window, max_answer_len=max_answer_len, top_k=top_k))
        answers.sort(key=lambda answer: answer["score"], reverse=True)
        if not answers:
            raise ValueError("no window holds a context token (is max_seq_len too short?)")
        return answers[0] if top_k == 1 else answers[:top_k]


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def window_answers(window: dict[str, Any], *, max_answer_len: int, top_k: int) -> list[dict]:
    """The window's ``top_k`` best spans inside its context, as character spans."""
    context_mask = np.asarray(window["context_mask"], dtype=bool)  # [n]
    if not context_mask.any():
        return []
    attention = window["attention_mask"]
    starts, ends, scores, _ = select_starts_ends(
        start=window["start_logits"].float().cpu().numpy(),  # [1, n]
        end=window["end_logits"].float().cpu().numpy(),
        p_mask=(~context_mask).astype(np.int64),  # 1: may not be in the answer
        attention_mask=None if attention is None else attention.cpu().numpy(),
        top_k=top_k,
        max_answer_len=max_answer_len,
    )
    offsets, context = window["offsets"], window["context"]
    answers = []
    for start, end, score in zip(starts, ends, scores, strict=True):
        first, last = trimmed(context, offsets[int(start)][0], offsets[int(end)][1])
        answers.append(
            {"score": float(score), "start": first, "end": last, "answer": context[first:last]}
        )
    return answers


def trimmed(text: str, first: int, last: int) -> tuple[int, int]:
    """[first, last) without the white space at its ends (byte-level BPE tokens carry
    the space before a word in their offsets)."""
    while first < last and text[first].isspace():
        first += 1
    while last > first and text[last - 1].isspace():
        last -= 1
    return first, last


def register_pipelines() -> None:
    """``pipeline("extractive-question-answering", ...)`` (idempotent)."""
    if QA_TASK in PIPELINE_REGISTRY.get_supported_tasks():
        return
    PIPELINE_REGISTRY.register_pipeline(
        QA_TASK,
        pipeline_class=ExtractiveQuestionAnsweringPipeline,
        pt_model=AutoModelForQuestionAnswering,
        type="text",
    )
