"""The training loop: AdamW, warmup + decay, clipping, accumulation, SAOR, evaluation,
best checkpoint, early stopping, atomic checkpoints and exact resume.

A run directory holds: ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoint.pt`` (model, optimizer, scheduler, RNG states, data position),
``best.safetensors`` and ``model.safetensors`` (final weights).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from ..models.heads import sequence_inputs
from ..models.reachability import encoder_reachability
from ..objectives import SAOROutput, saor_forward
from .checkpoint import atomic_save, load_checkpoint, rng_states, set_rng_states
from .config import RunConfig
from .distributed import all_mean, barrier, init_world
from .length_buckets import bucket_lengths, bucketed
from .progress import Progress
from .run_dir import RunDir
from .schedule import make_scheduler
from .tasks import get_task, validation_note
from .warm_start import warm_start

# The training logger: an info line per evaluation, the training records at debug.
log = logging.getLogger("ernie_sparse.training")


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the training split started
    position: int = 0  # global batches taken in this epoch
    best_metric: float | None = None  # the task's validation metric at its best so far
    evals_without_gain: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)  # evaluation records


def batch_indices(state: LoopState, size: int, batch: int, seed: int) -> list[int]:
    """The next global batch of a per-epoch permutation (seeded), advancing the position."""
    if (state.position + 1) * batch > size:
        state.epoch, state.position = state.epoch + 1, 0
    generator = torch.Generator().manual_seed(seed * 1_000_003 + state.epoch)
    order = torch.randperm(size, generator=generator)
    start = state.position * batch
    state.position += 1
    return order[start : start + batch].tolist()


def step_terms(out: SAOROutput) -> dict[str, torch.Tensor]:
    """What a training record logs about the loss, per forward pass:

    - ``loss``: the objective minimized (with SAOR: NLL(p1) + NLL(p2) + alpha * KL);
    - ``nll``: NLL per forward pass, the mean over the passes; the same definition as
      the evaluation's ``val_loss`` (which is one clean pass in eval mode);
    - ``kl``: SAOR's symmetric KL between the passes (0 with one pass);
    - with a second pass, ``nll_pass1`` (the input as given) and ``nll_pass2`` (rolled
      by SAOR, or under other dropout for R-Drop).
    """
    terms = {"loss": out.loss, "nll": out.nll, "kl": out.kl}
    if out.nll_second is not None:
        terms.update(nll_pass1=out.nll_first, nll_pass2=out.nll_second)
    return terms


def optimizer_for(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW; vectors (biases, norms, the representative embedding) are not decayed."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.train.lr)


class Run:
    """One training run in ``out``; ``resume`` continues from its checkpoint (from step 0
    when it has none yet). ``notes``: lines about what the resume changed (printed once the
    checkpoint is known to allow it; see resume.py)."""

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        *,
        resume: bool,
        quiet: bool = False,
        notes: Sequence[str] = (),
    ):
        self.config, self.out, self.quiet, self.notes = config, Path(out), quiet, tuple(notes)
        self.run_dir = RunDir(self.out)
        self.world = init_world()
        train = config.train
        torch.manual_seed(train.seed)
        self.task = get_task(train.task)
        self.train_set = self.task.read(train, "train")
        self.val_set = self.task.read(train, "val")
        self._check_data(self.train_set)
        self.module = self.task.build(config.model, self.train_set.info)
        self._check_batch(self.train_set)
        if train.init_from and not (resume and self.checkpoint_path.is_file()):
            warm_start(self.module, train.init_from, config.model)  # a resumed run has its own
        self.module.encoder.gradient_checkpointing = train.grad_checkpointing
        self.module.to(self.world.device)
        self.collate = self._bucketed_collate()
        if train.compile:  # in place: parameter names and checkpoints stay as they are
            self.module.compile(backend=train.compile)
        self.model = self._wrap(self.module)
        self.optimizer = optimizer_for(self.module, config)
        self.scheduler = make_scheduler(
            self.optimizer, warmup=train.warmup_steps, total=train.max_steps, decay=train.decay
        )
        self.state = LoopState()
        self.validation_note = validation_note(train)
        self._start(resume)
        if self.validation_note and self.world.is_main:
            log.warning("%s: %s", self.out, self.validation_note)
        self._report_reachability()
        self.tensorboard = self._open_tensorboard() if train.tensorboard else None

    def _check_data(self, dataset) -> None:
        model, info = self.config.model, dataset.info
        if model.vocab_size < info.vocab_size:
            raise ValueError(
                f"model.vocab_size={model.vocab_size} is smaller than the {info.task} "
                f"vocabulary ({info.vocab_size})"
            )
        if model.max_positions < info.max_length:
            raise ValueError(
                f"model.max_positions={model.max_positions} < train.max_length={info.max_length}"
            )

    def _check_batch(self, dataset) -> None:
        """The global batch must fit the training split and split over micro-batches and
        processes (checked after the task's own checks of the model)."""
        train = self.config.train
        if train.batch_size > len(dataset):
            raise ValueError(
                f"train.batch_size={train.batch_size} is larger than the training split "
                f"({len(dataset)} examples in {train.data or 'train.data'}); "
                f"use train.batch_size={len(dataset)} or less"
            )
        if train.batch_size < train.grad_accum * self.world.size:
            raise ValueError(
                f"train.batch_size={train.batch_size} cannot be split into "
                f"train.grad_accum={train.grad_accum} micro-batches on each of "
                f"{self.world.size} processes (it needs at least one example each)"
            )

    def _report_reachability(self) -> None:
        """Say whether this setting is in the bottleneck regime: write reachability.json
        and print its line (for the longest training input)."""
        if not self.world.is_main:
            return
        info, examples = self.train_set.info, getattr(self.train_set, "examples", None)
        length = info.max_length
        if examples and "input_ids" in examples[0]:
            length = max(example["input_ids"].shape[-1] for example in examples)
        source = info.far_token if info.far_token is not None and info.far_token < length else None
        found = encoder_reachability(self.module.encoder, length, source_token=source)
        record = {"input_len": length, **asdict(found), "line": found.describe()}
        self.run_dir.write_json(self.run_dir.reachability, record)
        if not self.quiet:
            print(f"{self.out.name}: {record['line']}", flush=True)

    def _bucketed_collate(self):
        """The task's collate, padding batches to ``train.length_buckets`` lengths (doubling
        up to the model's longest input, in whole attention blocks) when asked."""
        count = self.config.train.length_buckets
        if not count:
            return self.task.collate
        model = self.config.model
        buckets = bucket_lengths(model.max_positions, count, multiple=model.attention.block_size)
        return bucketed(self.task.collate, sequence_inputs(self.module), buckets)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world.size == 1:
            return module
        device_ids = [self.world.device.index] if self.world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    # --- run directory ---

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir.checkpoint

    def _start(self, resume: bool) -> None:
        restart = resume and not self.checkpoint_path.is_file()
        if resume and not restart:
            self._restore(load_checkpoint(self.checkpoint_path))
            self._check_resumed_steps()
        elif not resume and self.run_dir.has_progress():
            raise ValueError(f"{self.out} already holds a run; pass --resume or another --out")
        for line in self.notes:
            self._note(line)
        if self.world.is_main:
            if restart:
                self._clear_unfinished_start()
            self.out.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
            self.run_dir.write_text(self.run_dir.config, text)
            self._trim_metrics()
        barrier(self.world)

    def _note(self, text: str) -> None:
        """A line about what resuming does (printed even with --quiet, on rank 0)."""
        if self.world.is_main:
            print(f"{self.out}: {text}", flush=True)

    def _clear_unfinished_start(self) -> None:
        """--resume on a run with no checkpoint yet (killed before or during its first
        checkpoint write): remove what the discarded start left and train from step 0."""
        removed = [path.name for path in self.run_dir.unfinished_start()]
        for name in removed:
            (self.out / name).unlink()
        if removed:
            what = f"removed what the unfinished start left ({', '.join(removed)})"
            self._note(f"no checkpoint.pt yet (stopped before its first one): {what}; "
                       "training from step 0")  # fmt: skip
        else:
            self._note("no checkpoint.pt to resume from: training from step 0")

    def _check_resumed_steps(self) -> None:
        step, max_steps = self.state.step, self.config.train.max_steps
        if step > max_steps:
            raise ValueError(
                f"{self.out}: the run has done {step} steps, more than "
                f"train.max_steps={max_steps}; resume with --max-steps {step} or more"
            )
        if self.state.stopped_early:
            self._note(f"the run stopped early at step {step} (train.patience or "
                       "train.stop_at): there is nothing more to train")  # fmt: skip

    def _trim_metrics(self) -> None:
        """Drop metrics written after the checkpoint (they will be written again), and a
        half-written last line (a kill mid-write) with a note."""
        run = self.run_dir
        if not run.metrics.is_file():
            return
        lines = [line for line in run.metrics.read_text().splitlines() if line.strip()]
        records = run.read_metrics()  # a bad line before the last names the file and line
        if len(records) < len(lines):
            self._note(f"dropped the half-written last line of metrics.jsonl ({lines[-1][:40]!r})")
        kept = [record for record in records if record["step"] <= self.state.step]
        run.write_text(run.metrics, "".join(json.dumps(record) + "\n" for record in kept))

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        try:
            self.module.load_state_dict(checkpoint["model"])
        except RuntimeError as error:  # size mismatch, missing or unexpected keys
            first = str(error).strip().splitlines()
            detail = " ".join(line.strip() for line in first[1:3]) or first[0]
            raise ValueError(
                f"{self.checkpoint_path} does not fit the model of {self.run_dir.config} "
                f"({detail}); was config.yaml edited? Train with that config in another --out"
            ) from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self._apply_schedule()
        self.state = LoopState(**checkpoint["loop"])
        set_rng_states(checkpoint["rng"])
        self._pattern_generator().set_state(checkpoint["pattern_generator"])

    def _apply_schedule(self) -> None:
        """The next step's learning rate from this run's schedule (built from its config),
        not the checkpoint's: the same value unless a resume changed train.max_steps, when
        the schedule is rebuilt for the new total from the next step on."""
        scheduler = self.scheduler
        rates = [
            base * factor(scheduler.last_epoch)
            for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = rates

    def _pattern_generator(self) -> torch.Generator:
        return self.module.encoder.layouts.generator

    def _save_checkpoint(self) -> None:
        if not self.world.is_main:
            return
        checkpoint = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": vars(self.state),
            "rng": rng_states(),
            "pattern_generator": self._pattern_generator().get_state(),
        }
        atomic_save(checkpoint, self.checkpoint_path)

    def _save_weights(self, which: str) -> None:
        if self.world.is_main:
            weights = {
                k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()
            }
            path = self.run_dir.weights(which)
            temporary = RunDir.temporary(path)
            save_file(weights, str(temporary))
            temporary.replace(path)

    def _log(self, record: dict) -> None:
        evaluation = any(key.startswith("val_") for key in record)
        if evaluation and self.validation_note:
            record["validation"] = self.validation_note  # also in history and the final line
        if self.world.is_main:
            with self.run_dir.metrics.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            self._log_line(record, evaluation=evaluation)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, int | float):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def _log_line(self, record: dict, *, evaluation: bool) -> None:
        """One line per evaluation at info level, the training records at debug."""
        values = ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in record.items()
            if key not in ("step", "validation")
        )
        level = logging.INFO if evaluation else logging.DEBUG
        total = self.config.train.max_steps
        log.log(level, "%s step %d/%d: %s", self.out.name, record["step"], total, values)

    def _open_tensorboard(self):
        """A SummaryWriter on rank 0 (events after the resumed step are purged)."""
        if not self.world.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ValueError("train.tensorboard needs: pip install tensorboard") from error
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=self.state.step or None)

    # --- training ---

    def train(self) -> dict:
        train = self.config.train
        progress = Progress(
            train.max_steps, self.state.step, quiet=self.quiet or not self.world.is_main
        )
        tokens, started = 0, time.perf_counter()
        while self.state.step < train.max_steps and not self.state.stopped_early:
            record, batch_tokens = self._optimizer_step()
            tokens += batch_tokens
            if self.state.step % train.log_every == 0 or self.state.step == train.max_steps:
                elapsed = max(time.perf_counter() - started, 1e-9)
                record["tokens_per_s"] = round(tokens * self.world.size / elapsed, 1)
                self._log(record)
                tokens, started = 0, time.perf_counter()
            progress.update(self.state.step, loss=record["loss"])
            if self.state.step % train.eval_every == 0 or self.state.step == train.max_steps:
                value = self._evaluate_and_keep_best()
                progress.update(self.state.step, **{self.task.metric: value})
                self._save_checkpoint()
        progress.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self._save_weights("final")
        return self.state.history[-1] if self.state.history else {}

    def _optimizer_step(self) -> tuple[dict, int]:
        train = self.config.train
        indices = batch_indices(self.state, len(self.train_set), train.batch_size, train.seed)
        micro_batches = [indices[i :: train.grad_accum] for i in range(train.grad_accum)]
        totals = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
        tokens = 0
        self.model.train()
        for number, micro in enumerate(micro_batches):
            mine = micro[self.world.rank :: self.world.size]
            batch = self.collate([self.train_set[i] for i in mine], self._batch_generator(number))
            tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(self.world.device) for k, v in batch.items()}
            last = number == len(micro_batches) - 1
            with self._sync(last), self._autocast():
                out = saor_forward(self.model, batch)
            # Mean over the global batch: DDP averages over processes, so scale by their count.
            weight = len(mine) * self.world.size / len(indices)
            (out.loss * weight).backward()
            for key, value in step_terms(out).items():
                term = float(value.detach()) * len(mine) / len(indices)
                totals[key] = totals.get(key, 0.0) + term
        if train.clip_norm:
            nn.utils.clip_grad_norm_(self.module.parameters(), train.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        record = {"step": self.state.step, "epoch": self.state.epoch}
        record.update(
            {k: round(all_mean(v, self.world) * self.world.size, 6) for k, v in totals.items()}
        )
        record["lr"] = self.scheduler.get_last_lr()[0]
        return record, tokens

    def _batch_generator(self, micro_batch: int) -> torch.Generator:
        """Randomness of a training batch's collate (MLM masks): a function of the run's
        seed, the step, the micro-batch and the process, so a resumed run draws the same."""
        seed = self.config.train.seed
        key = ((seed * 1_000_003 + self.state.step) * 1009 + micro_batch) * 101 + self.world.rank
        return torch.Generator().manual_seed(key)

    def _sync(self, last: bool):
        if self.world.size > 1 and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self):
        if self.config.train.bf16:
            return torch.autocast(self.world.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reached(self, value: float, target: float) -> bool:
        return value >= target if self.task.higher_is_better else value <= target

    def _evaluate_and_keep_best(self) -> float:
        train = self.config.train
        metrics = self.task.evaluate(
            self.module,
            self.val_set,
            batch_size=train.batch_size,
            world=self.world,
            max_batches=train.eval_max_batches,
            collate=self.collate,
        )
        record = {"step": self.state.step, **{f"val_{k}": v for k, v in metrics.items()}}
        self._log(record)
        self.state.history.append(record)
        value = metrics[self.task.metric]
        if train.stop_at and self._reached(value, train.stop_at):
            self.state.stopped_early = True
        if self.task.is_better(value, self.state.best_metric):
            self.state.best_metric = value
            self.state.evals_without_gain = 0
            self._save_weights("best")
        else:
            self.state.evals_without_gain += 1
            if train.patience and self.state.evals_without_gain >= train.patience:
                self.state.stopped_early = True
        return value
