"""Local training speed: `LocalTrainer.train` against a hand-written PyTorch loop.

Both run the same model shape (same initial weights), AdamW, gradient clipping and the same
batches, for the same number of steps, in one process; repetitions alternate so that drifts in
machine load hit both alike. The trainer's time includes everything a round costs it: copying
the given weights in, sampling batches, and computing the delta. The trainer uses torch's fused
AdamW, so the plain loop runs twice: with AdamW's default implementation (what most people
write) and with ``fused=True`` (the strict like-for-like comparison). Prints steps/s of each
and the ratios trainer / plain (target ≥ 0.95).

``--threads 1`` gives stable figures on a machine shared with other work: with every core
busy, torch's intra-op threads wait on each other and timings swing by 5×.

    .venv/bin/python benchmarks/training.py [--preset tiny] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from worldlm.training.batches import gather_windows, sample_starts
from worldlm.training.model import ModelConfig, build_model, count_parameters
from worldlm.training.trainer import LocalTrainer, TrainConfig


def plain_loop(
    model: torch.nn.Module, batches: list[torch.Tensor], cfg: TrainConfig, *, fused: bool
) -> float:
    """The loop anyone would write by hand; returns its mean loss."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )
    model.train()
    total = torch.zeros(())
    for batch in batches:
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
    return float(total) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--arch", default="llama", choices=["llama", "gpt2"])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="e.g. cuda (untested here: CPU only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size, arch=args.arch)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, seed=1)
    stream = torch.randint(
        0, args.vocab_size, (200_000,), generator=torch.Generator().manual_seed(0)
    )

    device = torch.device(args.device)
    trainer = LocalTrainer(build_model(config, seed=0, device=device), cfg)
    plain = build_model(config, seed=0, device=device)
    given = {name: t.clone() for name, t in plain.state_dict().items()}

    # The same batches the trainer draws in a call made with seed=r (see LocalTrainer.train).
    def batches_for(round_seed: int) -> list[torch.Tensor]:
        starts = sample_starts(
            stream.numel(),
            cfg.seq_len,
            (cfg.steps, cfg.batch_size),
            torch.Generator().manual_seed(round_seed),
        )
        return [gather_windows(stream, s, cfg.seq_len).to(device) for s in starts]

    print(
        f"model {args.preset}/{args.arch}: {count_parameters(plain) / 1e6:.2f}M parameters; "
        f"{cfg.steps} steps of batch {cfg.batch_size} x {cfg.seq_len} tokens; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    # Warm-up: allocator, kernels and lazy initialisation for every path.
    for fused in (False, True):
        plain_loop(plain, batches_for(0)[:3], cfg, fused=fused)
    trainer.train(given, stream, seed=0)

    def run_plain(fused: bool, batches: list[torch.Tensor]) -> float:
        plain.load_state_dict(given)
        return plain_loop(plain, batches, cfg, fused=fused)

    times: dict[str, list[float]] = {"plain": [], "plain_fused": [], "trainer": []}
    order = list(times)
    plain_loss, trainer_loss = math.nan, math.nan
    for r in range(1, args.repeats + 1):
        batches = batches_for(r)
        # Rotate who goes first, so that no path always runs on a warmer or colder machine.
        for name in order[r % 3 :] + order[: r % 3]:
            start = time.perf_counter()
            if name == "trainer":
                trainer_loss = trainer.train(given, stream, seed=r).train_loss
            else:
                plain_loss = run_plain(name == "plain_fused", batches)
            if device.type == "cuda":
                torch.cuda.synchronize()  # (the trainer already waited: it reads its loss)
            times[name].append(time.perf_counter() - start)

    # Best of N (as timeit does): other processes on the machine only ever add time, so the
    # fastest repetition is the closest to the code's own cost. Medians are printed as well.
    best = {k: cfg.steps / min(v) for k, v in times.items()}
    median = {k: cfg.steps / statistics.median(v) for k, v in times.items()}
    labels = {
        "plain": "plain loop, AdamW default",
        "plain_fused": "plain loop, AdamW fused",
        "trainer": "LocalTrainer.train",
    }
    for key, label in labels.items():
        print(f"{label:28s}: {best[key]:7.2f} steps/s best, {median[key]:7.2f} median")
    for key in ("plain", "plain_fused"):
        print(
            f"ratio trainer / {labels[key]:26s}: {best['trainer'] / best[key]:.3f} best, "
            f"{median['trainer'] / median[key]:.3f} median (target >= 0.95)"
        )
    print(f"mean loss, last repeat: plain {plain_loss:.4f}, trainer {trainer_loss:.4f}")


if __name__ == "__main__":
    main()
