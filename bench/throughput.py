"""Encoder + head throughput on this machine (images/s, fp32): what the default widths and sizes
were chosen on.

python bench/throughput.py   ->  bench/results/throughput.json
"""

from pathlib import Path
import sys
import time

import torch

from meduniverse.core.files import write_json
from meduniverse.core.provenance import git_commit, machine_info
from meduniverse.models.encoder import CNNEncoder
from meduniverse.models.heads import ClassificationHead, DecoderHead

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [(16, 32, 64, 128), (24, 48, 96, 192), (32, 64, 128, 256)]
CASES = [("classification", 32, 64), ("segmentation", 128, 16)]  # (head, input px, batch)


def measure(
    widths: tuple[int, ...], head: str, size: int, batch: int, threads: int, repeats: int = 3
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = CNNEncoder(3, widths)
    top = DecoderHead(widths, 2) if head == "segmentation" else ClassificationHead(widths, 3)
    params = list(encoder.parameters()) + list(top.parameters())
    optimizer = torch.optim.AdamW(params)
    x = torch.randn(batch, 3, size, size)
    top(encoder(x)).mean().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        loss = top(encoder(x)).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train = batch * repeats / (time.perf_counter() - start)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(repeats):
            top(encoder(x))
        infer = batch * repeats / (time.perf_counter() - start)
    return {
        "widths": list(widths),
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "head": head,
        "size": size,
        "batch": batch,
        "threads": threads,
        "train_images_per_second": train,
        "inference_images_per_second": infer,
    }


def main() -> None:
    rows = [
        measure(w, head, size, batch, threads)
        for w in WIDTHS
        for head, size, batch in CASES
        for threads in (1, 2)
    ]
    write_json(
        ROOT / "bench" / "results" / "throughput.json",
        {
            "command": "python bench/throughput.py",
            "commit": git_commit(),
            "seeds": [0],
            "machine": machine_info(),
            "what": "forward + backward + AdamW (train) and forward only (inference), fp32, random "
            "inputs",
            "rows": rows,
        },
    )
    for r in rows:
        print(
            r["widths"],
            r["head"],
            r["size"],
            r["threads"],
            round(r["train_images_per_second"]),
            round(r["inference_images_per_second"]),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
