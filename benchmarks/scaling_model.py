"""Data-parallel scaling on paper, from measured inputs: how much of each step DDP's gradient all-reduce costs.

Inputs, all printed with the table:
- gradient bytes per step: the model's parameter count (built here) x 4 bytes (float32 gradients);
- compute time per step and GPU: ``convae bench`` on one GPU (``--bench docs/data/bench_h200.json``), at per-GPU
  batch 32 and 256 as measured; larger batches are extrapolated at the batch-256 rate (said in the table);
- links: NVLink inside a node (NCCL bus bandwidth ``--nvlink-gbytes``, default 400 GB/s, what NCCL's all-reduce
  test typically reaches on 8 H100/H200 on NVSwitch), and one network link per node between nodes at 25, 100 or
  400 Gb/s, at ``--link-efficiency`` of its line rate.

Model: a ring all-reduce moves 2 (n - 1) / n of the gradient bytes through each participant's link; between nodes
NCCL reduces inside each node first, so the node's network link carries that share with n = nodes; plus a latency
``--latency-us`` per ring hop. The seed model's 7.7 MB of gradients fill about one DDP bucket, so we assume no
overlap of communication with the backward pass (the pessimistic case): efficiency = compute / (compute + comm).
"""

from __future__ import annotations

import argparse
import json

from convae.models import build_model


def allreduce_seconds(grad_bytes: float, participants: int, bytes_per_s: float, latency_s: float) -> float:
    if participants <= 1:
        return 0.0
    return 2 * (participants - 1) / participants * grad_bytes / bytes_per_s + 2 * (participants - 1) * latency_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed")
    parser.add_argument("--bench", default="docs/data/bench_h200.json", help="convae bench --json-out of one GPU")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256, 2048])
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nvlink-gbytes", type=float, default=400.0)
    parser.add_argument("--links-gbit", type=float, nargs="+", default=[25, 100, 400])
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--link-efficiency", type=float, default=0.9)
    parser.add_argument("--latency-us", type=float, default=10.0)
    args = parser.parse_args()

    grad_bytes = 4 * sum(p.numel() for p in build_model(args.model).parameters())
    rows = json.load(open(args.bench))["rows"]
    gpu = {r["batch"]: r for r in rows if r["device"] == "cuda" and r["precision"] == args.precision}
    if not gpu:
        raise SystemExit(f"{args.bench}: no cuda/{args.precision} rows")
    largest = max(gpu)
    per_image = gpu[largest]["ms_per_step"] / 1e3 / largest
    compute = {b: (gpu[b]["ms_per_step"] / 1e3 if b in gpu else b * per_image) for b in args.batches}
    latency = args.latency_us * 1e-6

    print(f"model {args.model}: {grad_bytes / 1e6:.2f} MB of float32 gradients per step; "
          f"compute per step from {args.bench} ({gpu[largest]['device_name']}, {args.precision}): "
          + ", ".join(f"batch {b}: {compute[b] * 1e3:.3f} ms{'' if b in gpu else ' (extrapolated)'}"
                      for b in args.batches))
    print()
    header = "| setting | all-reduce per step | " + " | ".join(f"efficiency, batch {b}/GPU" for b in args.batches)
    print(header + " | per-GPU batch for 90 % |")
    print("|" + "---|" * (len(args.batches) + 3))

    def row(name: str, comm: float) -> None:
        eff = [compute[b] / (compute[b] + comm) for b in args.batches]
        need = 9 * comm / per_image  # compute >= 9 x comm
        print(f"| {name} | {comm * 1e3:.3f} ms | " + " | ".join(f"{e:.1%}" for e in eff)
              + f" | {max(1, round(need)):,} |")

    intra = allreduce_seconds(grad_bytes, args.gpus_per_node, args.nvlink_gbytes * 1e9, latency)
    row(f"1 node, {args.gpus_per_node} GPUs, NVLink", intra)
    for gbit in args.links_gbit:
        for nodes in args.nodes:
            inter = allreduce_seconds(grad_bytes, nodes, gbit / 8 * 1e9 * args.link_efficiency, latency)
            row(f"{nodes} nodes x {args.gpus_per_node} GPUs, {gbit:g} Gb/s", intra + inter)


if __name__ == "__main__":
    main()
