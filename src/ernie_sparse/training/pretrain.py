"""``ernie-sparse pretrain``: masked-LM pretraining on a folder of text files.

A pretraining run is an ordinary training run of task ``mlm`` (resumable the same
way): the corpus is ``train.data``, the tokenizer ``train.tokenizer``. The
tokenizer is, in order: ``--tokenizer``, the checkpoint's ``tokenizer.json``
(``--from``), or a byte-level BPE trained on the corpus and written to
``RUN/tokenizer.json``. With ``--from`` the encoder warm-starts from the checkpoint
(ERNIE-Sparse 4.2.1 starts from RoBERTa) and the model config is the checkpoint's
with the run's model values on top.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..cli_args import merge_nested
from ..data.corpus import find_text_files, train_tokenizer
from ..data.tokenize import Subword
from ..models.config import parse_overrides
from .config import RunConfig, load_run_config, preset_values, resolve
from .resume import apply_resume_changes
from .run_dir import RunDir

log = logging.getLogger("ernie_sparse.training")
DEFAULT_CONFIG = "pretrain/mlm-tiny"  # from scratch
WARM_CONFIG = "pretrain/mlm-warm-tiny"  # with --from: sizes from the checkpoint
TRAINED_VOCAB_SIZE = 8000  # byte-level BPE size when the tokenizer is trained here


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="folder of .txt/.rst/.md files")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--from", dest="init_from", help="pretrained directory to warm-start from")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: --from's, or trained)")
    parser.add_argument(
        "--config",
        help=f"preset or YAML file (default {DEFAULT_CONFIG}, {WARM_CONFIG} with --from)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=TRAINED_VOCAB_SIZE,
        help="vocabulary of a tokenizer trained on the corpus",
    )
    parser.add_argument("--max-steps", type=int, help="train.max_steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=0.0001")
    parser.set_defaults(run=run_pretrain)


def pretrain_config(args: argparse.Namespace) -> RunConfig:
    """The run's config: the saved one on resume, else preset + flags + overrides."""
    return pretrain_config_and_notes(args)[0]


def pretrain_config_and_notes(args: argparse.Namespace) -> tuple[RunConfig, list[str]]:
    """The run's config and the lines saying what a resume changes in it."""
    saved = RunDir(args.out).config
    if args.resume and saved.is_file():  # what a resume may change: training/resume.py
        flags = {"data": str(args.corpus), "max_steps": args.max_steps}
        flags.update(init_from=args.init_from, tokenizer=args.tokenizer)
        flags = {key: value for key, value in flags.items() if value is not None}
        asked = merge_nested(parse_overrides(args.overrides), {"train": flags})
        return apply_resume_changes(load_run_config(saved), asked, run_dir=args.out)
    name = args.config or (WARM_CONFIG if args.init_from else DEFAULT_CONFIG)
    values = merge_nested(preset_values(name), parse_overrides(args.overrides))
    flags = {"task": "mlm", "data": str(args.corpus)}
    if args.init_from:
        flags["init_from"] = args.init_from
    if args.max_steps is not None:
        flags["max_steps"] = args.max_steps
    values = merge_nested(values, {"train": flags})
    init_from = values["train"].get("init_from")
    tokenizer = (
        args.tokenizer or values["train"].get("tokenizer") or _default_tokenizer(args, init_from)
    )
    values = merge_nested(values, {"train": {"tokenizer": str(tokenizer)}})
    if init_from:  # the checkpoint's vocabulary, whatever the preset says
        values["model"] = {k: v for k, v in values.get("model", {}).items() if k != "vocab_size"}
    else:  # a model from scratch has exactly the tokenizer's vocabulary
        values = merge_nested(values, {"model": {"vocab_size": Subword(tokenizer).vocab_size}})
    return resolve(values), []


def _default_tokenizer(args: argparse.Namespace, init_from: str | None) -> Path:
    if init_from:
        return Path(init_from) / "tokenizer.json"
    path = args.out / "tokenizer.json"
    if not path.is_file():
        log.info(
            "training a byte-level BPE tokenizer (%d tokens) on %s", args.vocab_size, args.corpus
        )
        train_tokenizer(find_text_files(args.corpus), path, vocab_size=args.vocab_size)
    return path


def run_pretrain(args: argparse.Namespace) -> int:
    from .loop import Run

    config, notes = pretrain_config_and_notes(args)
    run = Run(config, args.out, resume=args.resume, quiet=args.quiet, notes=notes)
    final = run.train()
    if run.world.is_main:
        print(json.dumps({"step": run.state.step, **final}))
    return 0
