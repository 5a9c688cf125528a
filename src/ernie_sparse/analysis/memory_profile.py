"""BlockBERT's activation-memory regression (Qiu et al., section 2.2, Tables 1-2).

Activation memory per device is modelled as ``a2 b N^2 + a1 b N + a0``. With the
tokens per batch fixed (``b N = T``) it is linear in N: ``(a2 T) N + (a1 T + a0)``;
an ordinary least-squares line ``a N + c`` over N then splits the memory at any N
into an O(N^2) part ``a N`` (attention scores) and an O(N) part ``c`` (everything
else). BlockBERT with n blocks should divide ``a`` by n and leave ``c``.

What "activation memory" is here:

* CUDA: ``torch.cuda.max_memory_allocated`` during the forward pass minus what was
  allocated before it (the model) -- the paper's eq. 4 without optimizer state.
* CPU (no allocator statistics): the bytes of every tensor autograd keeps for the
  backward, after one training-mode forward: tensors packed through
  ``torch.autograd.graph.saved_tensors_hooks`` plus tensors that custom autograd
  Functions keep as attributes of their context (the blocked backend keeps its
  per-chunk probabilities there, which the hooks never see), deduplicated by
  storage, parameters excluded. This is the memory a backward needs, not transient
  peaks inside the forward.

Both models run their attention as the papers' implementations did: the BERT-like
model materializes the N x N probabilities (SDPA's math kernel, as BERT's code
did; fused kernels would hide the quadratic term altogether), BlockBERT uses the
``blocked`` backend with one block per part (``block_size = N / n``), which
materializes only the n blocks of N/n x N/n each head attends (N is padded up to
a multiple of n inside, e.g. 128 -> 129 for n = 3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..cli_args import int_list
from ..models import SequenceClassifier, preset
from ..plotting import pyplot, save_figure

GIB = 2**30
PAPER_SPLITS = {2: "10:2", 3: "8:2:2"}  # BlockBERT Table 2's head configurations (12 heads)


@dataclass
class ProfileConfig:
    tokens: int = 4096  # b x N, fixed (the paper's 4096 per GPU)
    lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048)  # N
    blocks: tuple[int, ...] = (2, 3)  # BlockBERT n
    hidden_size: int = 768  # BERT-base
    num_layers: int = 12
    num_heads: int = 12
    mlp_size: int = 3072
    vocab_size: int = 30522
    dropout: float = 0.1  # hidden dropout (its masks are O(N))
    attention_dropout: float = 0.0  # see the report: 0 keeps the N^2 terms comparable
    dtype: str = "float32"  # float32 | bfloat16 (autocast)
    device: str = "cpu"
    seed: int = 0


@dataclass(frozen=True)
class ProfiledModel:
    """One profiled model: its label in rows, fits and report, and BlockBERT's n."""

    label: str
    blocks: int = 0  # BlockBERT's n (parts, one layout block each); 0 = the BERT-like model


def profiled_models(config: ProfileConfig) -> list[ProfiledModel]:
    """BERT first (the O(N^2) baseline), then BlockBERT for each n."""
    return [ProfiledModel("BERT"), *(ProfiledModel(f"BlockBERT n={n}", n) for n in config.blocks)]


def model_names(config: ProfileConfig) -> list[str]:
    return [model.label for model in profiled_models(config)]


def head_split(blocks: int, heads: int) -> str:
    """The paper's split for 12 heads, else heads spread as evenly as possible."""
    if heads == 12 and blocks in PAPER_SPLITS:
        return PAPER_SPLITS[blocks]
    if heads < blocks:
        raise ValueError(f"BlockBERT n={blocks} needs at least {blocks} heads, got {heads}")
    counts = [heads // blocks + (1 if i < heads % blocks else 0) for i in range(blocks)]
    return ":".join(map(str, counts))


def build_model(model: ProfiledModel, length: int, config: ProfileConfig) -> SequenceClassifier:
    sizes = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "mlp_size": config.mlp_size,
        "max_positions": length,
        "dropout": config.dropout,
    }
    attention = {"dropout": config.attention_dropout, "backend": "blocked"}
    if not model.blocks:
        model_config = preset("dense", attention={**attention, "block_size": length}, **sizes)
    else:
        split = head_split(model.blocks, config.num_heads)
        # One layout block per part; N not divisible by n is padded to n blocks inside.
        attention["block_size"] = -(-length // model.blocks)
        attention["pattern_params"] = {"head_split": split}
        model_config = preset("blockbert", attention=attention, **sizes)
    torch.manual_seed(config.seed)
    return SequenceClassifier(model_config, num_labels=2)


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _tensors_in(value, depth: int = 0):
    """Tensors inside nested lists / tuples / dicts (a custom Function's ctx attributes)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 4 and isinstance(value, list | tuple):
        for item in value:
            yield from _tensors_in(item, depth + 1)
    elif depth < 4 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item, depth + 1)


def _context_tensors(root) -> list[torch.Tensor]:
    """Tensors held as attributes of custom autograd Function nodes reachable from ``root``."""
    found, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for value in getattr(node, "__dict__", {}).values():
            found.extend(_tensors_in(value))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def saved_activation_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """Bytes autograd keeps for the backward of ``model(**batch).loss`` (see the module doc):
    {"hooks": packed saved tensors, "context": extra tensors on custom Function contexts,
    "total"}; each storage counted once, parameters and buffers never."""
    excluded = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    counted: dict[tuple[int, int], str] = {}

    def remember(tensor: torch.Tensor, source: str) -> None:
        key = _storage_key(tensor)
        if key[1] and key not in excluded and key not in counted:
            counted[key] = source

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        remember(tensor, "hooks")
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    for tensor in _context_tensors(loss.grad_fn):
        remember(tensor, "context")
    sizes = {"hooks": 0, "context": 0}
    for (_, nbytes), source in counted.items():
        sizes[source] += nbytes
    return {**sizes, "total": sizes["hooks"] + sizes["context"]}


def cuda_activation_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    loss = model(**batch).loss
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del loss
    return {"hooks": None, "context": None, "total": peak}


def measure(profiled: ProfiledModel, length: int, config: ProfileConfig) -> dict:
    """One (model, N) point at b = tokens / N."""
    if config.tokens % length:
        raise ValueError(f"--tokens {config.tokens} is not a multiple of N={length}")
    batch_size = config.tokens // length
    device = torch.device(config.device)
    model = build_model(profiled, length, config).to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(1, config.vocab_size, (batch_size, length), generator=generator)
    batch = {"input_ids": ids.to(device), "labels": torch.zeros(batch_size, dtype=torch.long)}
    batch["labels"] = batch["labels"].to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config.dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    counter = cuda_activation_bytes if device.type == "cuda" else saved_activation_bytes
    with sdpa_kernel([SDPBackend.MATH]), autocast:
        sizes = counter(model, batch)
    return {"model": profiled.label, "seq_len": length, "batch": batch_size, **sizes}


def fit_line(lengths: list[int], values: list[float]) -> tuple[float, float]:
    """Ordinary least squares ``value = a N + c``: (a, c)."""
    if len(lengths) < 2:
        raise ValueError("the regression needs at least two lengths")
    design = torch.tensor([[float(n), 1.0] for n in lengths], dtype=torch.float64)
    target = torch.tensor(values, dtype=torch.float64)[:, None]
    solution = torch.linalg.lstsq(design, target).solution.flatten()
    return float(solution[0]), float(solution[1])


def run_profile(config: ProfileConfig, *, log=print) -> dict:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here")
    models = profiled_models(config)
    rows = []
    for model in models:
        for length in config.lengths:
            row = measure(model, length, config)
            rows.append(row)
            log(
                f"  {model.label:>14} N={length:>5} b={row['batch']:>3}: "
                f"{row['total'] / GIB:.3f} GiB"
            )
    fits = {}
    for model in models:
        points = [r for r in rows if r["model"] == model.label]
        slope, intercept = fit_line([r["seq_len"] for r in points], [r["total"] for r in points])
        fits[model.label] = {"slope_bytes_per_token": slope, "intercept_bytes": intercept}
    baseline = next(model.label for model in models if not model.blocks)
    dense_slope = fits[baseline]["slope_bytes_per_token"]
    for fit in fits.values():
        fit["quadratic_vs_bert"] = fit["slope_bytes_per_token"] / dense_slope
    method = "cuda max_memory_allocated" if config.device == "cuda" else "autograd saved tensors"
    return {"config": asdict(config), "method": method, "rows": rows, "fits": fits}


def table1(result: dict, lengths: list[int] | None = None) -> str:
    """BlockBERT Table 1: O(N) and O(N^2) activation memory (GiB) from the fits, plus the
    measured total and the O(N^2) ratio to BERT's."""
    config = result["config"]
    lengths = lengths or [n for n in config["lengths"] if n in (512, 1024)] or config["lengths"]
    lines = [
        "| N | b | Model | O(N) GiB | O(N^2) GiB | O(N^2) vs BERT | measured GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    measured = {(r["model"], r["seq_len"]): r["total"] for r in result["rows"]}
    for length in lengths:
        for name, fit in result["fits"].items():
            quadratic = fit["slope_bytes_per_token"] * length / GIB
            linear = fit["intercept_bytes"] / GIB
            total = measured.get((name, length))
            lines.append(
                f"| {length} | {config['tokens'] // length} | {name} | {linear:.3f} | "
                f"{quadratic:.3f} | {fit['quadratic_vs_bert']:.3f} | "
                f"{'-' if total is None else f'{total / GIB:.3f}'} |"
            )
    return "\n".join(lines)


def plot_profile(result: dict, path: Path) -> Path:
    """Measured activation memory vs N (points) and the fitted lines, like BlockBERT Fig. 3."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6, 4))
    for index, (name, fit) in enumerate(result["fits"].items()):
        points = [r for r in result["rows"] if r["model"] == name]
        lengths = [r["seq_len"] for r in points]
        axis.plot(lengths, [r["total"] / GIB for r in points], "o", color=f"C{index}")
        line = [(fit["slope_bytes_per_token"] * n + fit["intercept_bytes"]) / GIB for n in lengths]
        slope, intercept = fit["slope_bytes_per_token"] / GIB, fit["intercept_bytes"] / GIB
        label = f"{name}: {slope:.2e} N + {intercept:.2f}"
        axis.plot(lengths, line, "-", color=f"C{index}", label=label)
    axis.set_xlabel("sequence length N (b x N fixed)")
    axis.set_ylabel("activation memory (GiB)")
    axis.set_title(f"b x N = {result['config']['tokens']} ({result['method']})")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(fig, path)


def write_profile(result: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    picture = plot_profile(result, out / "memory-profile.png")
    table = table1(result)
    config = result["config"]
    fits = "\n".join(
        f"- {name}: {fit['slope_bytes_per_token'] / GIB:.3e} x N + "
        f"{fit['intercept_bytes'] / GIB:.3f} GiB (O(N^2) term {fit['quadratic_vs_bert']:.3f} "
        "of BERT's)"
        for name, fit in result["fits"].items()
    )
    report = [
        "# Activation memory regression (BlockBERT section 2.2, Table 1)",
        "",
        f"Model: {config['num_layers']} layers, hidden {config['hidden_size']}, "
        f"{config['num_heads']} heads, MLP {config['mlp_size']}; b x N = {config['tokens']}; "
        f"{config['dtype']}; hidden dropout {config['dropout']}, attention dropout "
        f"{config['attention_dropout']}. Measured as: {result['method']} "
        "(see `ernie_sparse.analysis.memory_profile`).",
        "",
        "Least-squares fits (activation memory vs N at fixed b x N):",
        "",
        fits,
        "",
        table,
        "",
        f"![activation memory]({picture.name})",
        "",
    ]
    (out / "report.md").write_text("\n".join(report))
    return fits + "\n\n" + table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ProfileConfig()
    parser.add_argument("--tokens", type=int, default=defaults.tokens, help="b x N")
    parser.add_argument("--lengths", type=int_list, default=defaults.lengths)
    parser.add_argument("--blocks", type=int_list, default=defaults.blocks, help="BlockBERT n")
    for name in ("hidden_size", "num_layers", "num_heads", "mlp_size", "vocab_size"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--attention-dropout", type=float, default=defaults.attention_dropout)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/memory-profile"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = ProfileConfig(
        tokens=args.tokens,
        lengths=tuple(args.lengths),
        blocks=tuple(args.blocks),
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        mlp_size=args.mlp_size,
        vocab_size=args.vocab_size,
        dropout=args.dropout,
        attention_dropout=args.attention_dropout,
        dtype=args.dtype,
        device=args.device,
    )
    result = run_profile(config)
    text = write_profile(result, args.out)
    print(f"\n{text}\n\nwrote {args.out / 'report.md'}")
    return 0
