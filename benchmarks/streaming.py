"""Real-time streaming FRCRN: per-hop compute time against the hop duration, on CPU threads.

A causal FRCRN (random weights: speed does not depend on them) runs through
``FRCRNStreamer`` fed one hop (320 samples, 20 ms) at a time, as a live input would be. Each
``process`` call then enhances exactly one frame. Prints a markdown table per configuration:
parameters, algorithmic latency, mean / p95 compute time per hop (wall clock, and the CPU time
of the thread, which a busy machine inflates less), the real-time factor RTF = mean wall time
per hop / hop duration (below 1: faster than real time), and the largest difference between
the streamed output and the offline causal forward.

Usage: python benchmarks/streaming.py [--seconds 10] [--threads 1] [--configs official medium small tiny]
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from speechbrain_ext.inference.streaming import FRCRNStreamer
from speechbrain_ext.lobes.models.frcrn import FRCRN

from machine import cpu_description

CONFIGS = {
    "official": dict(channels=128, fsmn_hidden=128, fsmn_order=20),
    "medium": dict(channels=64, fsmn_hidden=64, fsmn_order=10),
    "small": dict(channels=32, fsmn_hidden=32, fsmn_order=10),
    "tiny": dict(channels=24, fsmn_hidden=24, fsmn_order=8),
    # The DNS recipe's hparams/frcrn_small.yaml (the demo weights' size), trained with --causal True.
    "recipe-small": dict(channels=16, fsmn_hidden=16, fsmn_order=20),
}
SAMPLE_RATE = 16000


def streaming_parity(model, seconds=1.0):
    """max |streamed - offline| on ``seconds`` of noise (the documented one-window delay): over
    every sample, and after the first hop, where the inverse STFT divides by a vanishing
    window sum and so magnifies rounding differences."""
    length = int(seconds * SAMPLE_RATE)
    noisy = 0.1 * torch.randn(length, generator=torch.Generator().manual_seed(1))
    streamer = FRCRNStreamer(model, num_threads=None)
    streamed = torch.cat([streamer.process(b) for b in noisy.split(777)] + [streamer.flush()])
    with torch.no_grad():
        offline = model(F.pad(noisy, (0, streamer.latency))[None])[0, :length]
    difference = (streamed[streamer.latency :] - offline).abs()
    return difference.max().item(), difference[streamer.hop :].max().item()


def measure(name, seconds, warmup_seconds=1.0):
    """Per-hop wall and CPU times (seconds) of streaming ``seconds`` of audio."""
    torch.manual_seed(0)
    model = FRCRN(causal=True, **CONFIGS[name]).eval()
    streamer = FRCRNStreamer(model, num_threads=None)  # the caller sets the threads
    hop = streamer.hop
    noisy = 0.1 * torch.randn(int((seconds + warmup_seconds) * SAMPLE_RATE))
    blocks = noisy.split(hop)
    warmup = int(warmup_seconds * SAMPLE_RATE) // hop
    wall, cpu = [], []
    for index, block in enumerate(blocks):
        start, start_cpu = time.perf_counter(), time.thread_time()
        streamer.process(block)
        if index >= warmup and block.shape[-1] == hop:
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
    return model, hop, streamer.latency_seconds, wall, cpu


def p95(values):
    return sorted(values)[int(0.95 * (len(values) - 1))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio streamed per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=sorted(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.configs:
        model, hop, latency, wall, cpu = measure(name, args.seconds)
        hop_ms = 1000 * hop / SAMPLE_RATE
        widths = CONFIGS[name]
        rows.append(
            f"| {name} ({widths['channels']}/{widths['fsmn_hidden']}/{widths['fsmn_order']}) "
            f"| {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M | {1000 * latency:.0f} "
            f"| {1000 * statistics.mean(wall):.2f} | {1000 * p95(wall):.2f} "
            f"| {1000 * statistics.mean(cpu):.2f} | {1000 * p95(cpu):.2f} "
            f"| {statistics.mean(wall) / (hop_ms / 1000):.2f} | {'{:.1e} / {:.1e}'.format(*streaming_parity(model))} |"
        )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nFRCRNStreamer, one hop ({hop_ms:.0f} ms) per call, {args.seconds:g} s of audio per configuration; "
        f"{args.threads} thread(s), torch {torch.__version__}, {cpu_description()}, "
        f"load average {load:.2f} at the end\n"
    )
    print("| config (channels/fsmn_hidden/fsmn_order) | params | latency ms | mean ms/hop | p95 ms/hop "
          "| mean CPU ms/hop | p95 CPU ms/hop | RTF | max abs stream - offline (all / after 1st hop) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nRTF = mean wall-clock compute per hop / hop duration (below 0.5: half the hop to spare). "
          "Latency is algorithmic (one window); compute time adds to it.")


if __name__ == "__main__":
    main()
