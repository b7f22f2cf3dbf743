"""GPU readiness of FRCRN and MossFormer against the reference, on one CUDA device.

Prints four markdown tables (about 5 minutes on one H100-class GPU):

1. parity on CUDA: ours vs the reference, same random weights, eval mode (max |difference|
   and SI-SNR of ours against the reference's output);
2. training step (forward + official loss + backward + Adam), ours vs the reference, in fp32
   and under bf16 autocast (the recipes' ``--precision bf16``); fastest of a few steps;
3. inference throughput, seconds of audio per second, at batch 1 and 8 (ours with the fused
   kernels, as the interfaces run; the reference as it is);
4. peak GPU memory of each of those.

Usage: python benchmarks/gpu_check.py   (or benchmarks/gpu_check.sh)
       python benchmarks/gpu_check.py --device cpu --scale 0.05   (a dry run of the script)
"""

import argparse

import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from train_speed import build_pair, make_batch  # noqa: E402

DEVICE = "cuda"  # --device changes it
TRAIN_INPUTS = {"frcrn": (4, 4.0), "mossformer": (2, 4.0)}  # (batch, seconds) per step
INFERENCE_SECONDS = {"frcrn": 10.0, "mossformer": 10.0}
RATES = {"frcrn": 16000, "mossformer": 8000}


def timed(function, repeats=3):
    """Fastest of ``repeats`` synchronised calls (after one warm-up) and the peak memory in MB."""
    cuda = DEVICE.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    function()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")


def release_memory():
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()


def inference_pair(model, workdir):
    """``{"reference": fn, "ours": fn}`` mapping a batch of waveforms to the model's output."""
    if model == "frcrn":
        from conftest import make_reference_frcrn

        from speechbrain_ext.convert import frcrn_from_official

        reference = make_reference_frcrn(seed=0).to(DEVICE).eval()
        ours = frcrn_from_official(reference.state_dict()).to(DEVICE).fuse_for_inference()
        return {"reference": lambda x: reference(x)[4], "ours": ours}
    from conftest import make_reference_mossformer

    from speechbrain_ext.convert import mossformer_from_official

    reference = make_reference_mossformer(workdir, seed=0).to(DEVICE).eval()
    ours = mossformer_from_official(workdir).to(DEVICE).fuse_for_inference()
    return {"reference": reference, "ours": ours}


def si_snr_db(estimate, reference):
    estimate, reference = estimate.double().flatten(), reference.double().flatten()
    target = (estimate @ reference) / (reference @ reference) * reference
    return float(10 * torch.log10((target @ target) / ((estimate - target) @ (estimate - target))))


def main():
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every input length")
    args = parser.parse_args()
    DEVICE = args.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity in true fp32
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else DEVICE
    print(f"device: {name}, torch {torch.__version__}\n")
    parity, training, inference = [], [], []
    for model in ("frcrn", "mossformer"):
        with tempfile.TemporaryDirectory() as workdir:
            functions = inference_pair(model, workdir)
            generator = torch.Generator().manual_seed(0)
            rate = RATES[model]
            seconds = INFERENCE_SECONDS[model] * args.scale
            for batch in (1, 8):
                audio = (0.1 * torch.randn(batch, int(seconds * rate), generator=generator)).to(DEVICE)
                outputs, row = {}, []
                with torch.inference_mode():
                    for name in ("reference", "ours"):
                        elapsed, memory = timed(lambda: functions[name](audio))
                        outputs[name] = functions[name](audio)
                        row += [f"{batch * seconds / elapsed:.1f}", f"{memory:.0f} MB"]
                inference.append(f"| {model} | {batch} x {seconds:g} s | " + " | ".join(row) + " |")
                if batch == 1:
                    common = min(outputs["ours"].shape[1], outputs["reference"].shape[1])  # time axis
                    ours, ref = outputs["ours"][:, :common], outputs["reference"][:, :common]
                    parity.append(f"| {model} | {(ours - ref).abs().max().item():.1e} | {si_snr_db(ours, ref):.1f} dB |")
            del functions
            release_memory()
            for label, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
                steps = build_pair(model, workdir, DEVICE, dtype)
                batch, seconds = TRAIN_INPUTS[model]
                seconds *= args.scale
                inputs, targets = make_batch(model, batch, seconds, DEVICE)
                row = []
                times = {}
                for name in ("reference", "ours"):
                    times[name], memory = timed(lambda: steps[name](inputs, targets))
                    row += [f"{times[name] * 1000:.0f} ms", f"{memory:.0f} MB"]
                training.append(f"| {model} | {label} | B={batch}, {seconds:g} s | " + " | ".join(row)
                                + f" | {times['ours'] / times['reference']:.2f} |")
                del steps
                release_memory()
    print("Parity on CUDA (eval, fp32, same random weights)\n")
    print("| model | max abs difference | SI-SNR of ours vs reference |\n|---|---|---|")
    print("\n".join(parity))
    print("\nTraining step (forward + official loss + backward + Adam)\n")
    print("| model | precision | batch | reference | reference peak | ours | ours peak | ours/ref |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(training))
    print("\nInference throughput (seconds of audio per second) and peak memory\n")
    print("| model | input | reference | reference peak | ours | ours peak |\n|---|---|---|---|---|---|")
    print("\n".join(inference))


if __name__ == "__main__":
    main()
