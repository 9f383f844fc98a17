"""Training-step speed of each numeric path, measured side by side in one run.

Usage::

    python benchmarks/speed.py [--steps 20] [--batch 8] [--patch 256] [--width 16]

Prints a table and writes ``benchmarks/results/speed.json``. Every path trains
the same U-Net (same initial weights) on the same random batch; the ratio
column is fp32 time divided by the path's time. The agreement columns compare
softmax outputs of the same weights under each path against fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_noisyseg.engine.device import NumericPath, available_devices, cpu_supports_bf16, numeric_path  # noqa: E402
from napari_noisyseg.engine.losses import ce_dice_loss  # noqa: E402
from napari_noisyseg.engine.unet import UNet  # noqa: E402


def candidate_paths() -> list[NumericPath]:
    paths = []
    for name in available_devices():
        device = torch.device(name)
        paths.append(numeric_path(device, "fp32"))
        if name == "cuda":
            paths += [numeric_path(device, "fp16"), numeric_path(device, "bf16")]
        elif name == "cpu":
            paths.append(numeric_path(device, "bf16"))
    return paths


def time_steps(path: NumericPath, args, state: dict, images, labels) -> dict:
    model = UNet(1, 2, width=args.width, depth=args.depth)
    model.load_state_dict(state)
    model = model.to(path.device, memory_format=path.memory_format(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(path.device.type) if path.grad_scaler else None
    x = images.to(path.device).contiguous(memory_format=path.memory_format(4))
    y = labels.to(path.device)

    def step():
        with path.autocast():
            logits = model(x)
        loss = ce_dice_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if path.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if path.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    return {"path": path.name, "s_per_step": seconds}


@torch.no_grad()
def agreement(path: NumericPath, reference: torch.Tensor, state: dict, images, args) -> dict:
    model = UNet(1, 2, width=args.width, depth=args.depth)
    model.load_state_dict(state)
    model = model.to(path.device, memory_format=path.memory_format(4)).eval()
    with path.autocast():
        probs = torch.softmax(model(images.to(path.device).contiguous(memory_format=path.memory_format(4))).float(), 1)
    probs = probs.cpu()
    return {
        "max_abs_prob_diff": float((probs - reference).abs().max()),
        "argmax_agreement": float((probs.argmax(1) == reference.argmax(1)).float().mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    images = torch.rand(args.batch, 1, args.patch, args.patch)
    labels = (images[:, 0] > 0.5).long()
    state = UNet(1, 2, width=args.width, depth=args.depth).state_dict()
    eval_model = UNet(1, 2, width=args.width, depth=args.depth)
    eval_model.load_state_dict(state)
    with torch.no_grad():
        reference = torch.softmax(eval_model.eval()(images), 1)

    rows = []
    for path in candidate_paths():
        row = time_steps(path, args, state, images, labels)
        row.update(agreement(path, reference, state, images, args))
        rows.append(row)
    fp32 = {r["path"].split("-")[0]: r["s_per_step"] for r in rows if r["path"].endswith("fp32")}
    for row in rows:
        row["speedup_vs_fp32"] = fp32[row["path"].split("-")[0]] / row["s_per_step"]

    print(f"U-Net width {args.width} depth {args.depth}, batch {args.batch} x {args.patch}^2, "
          f"{args.steps} timed steps, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'path':12s} {'s/step':>8s} {'speedup':>8s} {'max|dp|':>8s} {'argmax=':>8s}")
    for row in rows:
        print(f"{row['path']:12s} {row['s_per_step']:8.3f} {row['speedup_vs_fp32']:7.2f}x "
              f"{row['max_abs_prob_diff']:8.4f} {row['argmax_agreement']:8.4f}")
    report = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "settings": vars(args),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
