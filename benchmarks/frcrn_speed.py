"""FRCRN inference speed and memory: ours vs the reference (ModelScope), same weights, same input.

Each measurement runs in its own subprocess so that peak RSS belongs to one model only.
Prints a markdown table: wall time of one forward pass, peak RSS, ratio ours/reference, and the
max |ours - reference| of the enhanced waveforms.

Usage: python benchmarks/frcrn_speed.py [--seconds 10 60] [--threads 2] [--repeats 1]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from machine import cpu_description

SAMPLE_RATE = 16000
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the seeded reference model lives there


def _worker(implementation, seconds, threads, repeats, weights, output):
    """Time one model on one input; print a JSON line with time and peak RSS."""
    torch.set_num_threads(threads)
    state = torch.load(weights, weights_only=True)
    if implementation == "reference":
        from conftest import OFFICIAL_FRCRN_KWARGS
        from modelscope.models.audio.ans.frcrn import FRCRN

        model = FRCRN(**OFFICIAL_FRCRN_KWARGS)
        model.load_state_dict(state)

        def enhance(wav):
            return model(wav)[4]

    else:
        from speechbrain_ext.convert import frcrn_from_official

        model = frcrn_from_official(state).fuse_for_inference()  # what EnhanceFRCRN runs
        enhance = model.forward
    model.eval()
    noisy = 0.1 * torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        enhance(noisy[:, :SAMPLE_RATE])  # warm-up: one-off allocations and kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            enhanced = enhance(noisy)
            times.append(time.perf_counter() - start)
    torch.save(enhanced[:, : noisy.shape[-1]].clone(), output)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"time": min(times), "peak_mb": peak_mb}))


def _measure(implementation, seconds, args, weights, workdir):
    output = os.path.join(workdir, f"{implementation}_{seconds}.pt")
    command = [sys.executable, __file__, "--worker", implementation, "--seconds", str(seconds),
               "--threads", str(args.threads), "--repeats", str(args.repeats), "--weights", weights,
               "--output", output]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    stats["output"] = torch.load(output, weights_only=True)
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["reference", "ours"])
    parser.add_argument("--weights")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, args.seconds[0], args.threads, args.repeats, args.weights, args.output)

    from conftest import make_reference_frcrn

    with tempfile.TemporaryDirectory() as workdir:
        weights = os.path.join(workdir, "pytorch_model.bin")
        torch.save(make_reference_frcrn(seed=0).state_dict(), weights)
        rows = []
        for seconds in args.seconds:
            ref = _measure("reference", seconds, args, weights, workdir)
            ours = _measure("ours", seconds, args, weights, workdir)
            diff = (ours["output"][..., : ref["output"].shape[-1]] - ref["output"]).abs().max().item()
            rows.append(
                f"| {seconds:g} s | {ref['time']:.2f} s | {ours['time']:.2f} s | {ours['time'] / ref['time']:.2f} | "
                f"{ref['peak_mb']:.0f} MB | {ours['peak_mb']:.0f} MB | {diff:.1e} |"
            )
    print(f"FRCRN, official size, random weights; CPU {cpu_description()}, "
          f"torch {torch.__version__}, {args.threads} threads, inference mode\n")
    print("| audio | reference time | ours time | ours/ref | reference peak RSS | ours peak RSS | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
