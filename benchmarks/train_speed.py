"""Training step speed: ours vs the reference (ModelScope), official sizes, train mode.

One training step is what the recipes run per batch: forward, the official loss, backward and an
Adam step. FRCRN's loss is the official 'Mix' loss (``FRCRN.loss`` of the reference,
:func:`speechbrain_ext.lobes.models.frcrn.frcrn_loss` for ours); MossFormer's is SpeechBrain's
permutation-invariant SI-SNR (``get_si_snr_with_pitwrapper``), as both training codes use. Both
models get identical weights and identical batches; the two implementations alternate within one
process (so machine noise affects both alike) and the fastest of ``--repeats`` steps is reported.
Peak RSS is measured in a subprocess per implementation and input (two steps, counted after the
other implementation's model is freed), so that it is that model's own (Linux).

Usage::

    python benchmarks/train_speed.py                      # both models, two lengths each
    python benchmarks/train_speed.py --models frcrn --repeats 5

Prints a markdown table.
"""

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the seeded reference models live there

#: (batch size, seconds) per model: the recipes' batch shapes on a CPU, two lengths each.
INPUTS = {"frcrn": [(2, 1.0), (2, 2.0)], "mossformer": [(1, 1.0), (1, 2.0)]}
SAMPLE_RATES = {"frcrn": 16000, "mossformer": 8000}


def build_pair(model, workdir, device="cpu", autocast_dtype=None):
    """``{"reference": step_fn, "ours": step_fn}``: one training step each, same weights, on
    ``device``; ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs forward and loss under autocast."""
    if model == "frcrn":
        from conftest import make_reference_frcrn

        from speechbrain_ext.convert import frcrn_from_official
        from speechbrain_ext.lobes.models.frcrn import frcrn_loss

        reference = make_reference_frcrn(seed=0).train().to(device)
        ours = frcrn_from_official(reference.state_dict()).train().to(device)

        def reference_loss(noisy, clean):
            return reference.loss(noisy, clean, reference(noisy), mode="Mix")["loss"]

        def our_loss(noisy, clean):
            return frcrn_loss(ours, ours.forward_stages(noisy), noisy, clean)["loss"]

    else:
        from conftest import make_reference_mossformer
        from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

        from speechbrain_ext.convert import mossformer_from_official

        reference = make_reference_mossformer(workdir, seed=0).train().to(device)
        ours = mossformer_from_official(workdir).train().to(device)

        def reference_loss(mix, sources):
            return get_si_snr_with_pitwrapper(sources, reference(mix)).mean()

        def our_loss(mix, sources):
            return get_si_snr_with_pitwrapper(sources, ours(mix)).mean()

    steps = {}
    for name, module, loss_fn in (("reference", reference, reference_loss), ("ours", ours, our_loss)):
        optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)

        def step(inputs, targets, loss_fn=loss_fn, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(inputs, targets)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        steps[name] = step
    return steps


def make_batch(model, batch, seconds, device="cpu"):
    """Speech-like noisy inputs and targets: FRCRN (noisy, clean) ``[B, T]``, MossFormer
    (mixture ``[B, T]``, sources ``[B, T, 2]``); FRCRN lengths are whole frames."""
    generator = torch.Generator().manual_seed(1)
    length = int(seconds * SAMPLE_RATES[model])
    if model == "frcrn":
        length = (max(1, round((length - 640) / 320)) * 320) + 640
        clean = 0.1 * torch.randn(batch, length, generator=generator)
        noisy = clean + 0.05 * torch.randn(batch, length, generator=generator)
        return noisy.to(device), clean.to(device)
    sources = 0.1 * torch.randn(batch, length, 2, generator=generator)
    return sources.sum(-1).to(device), sources.to(device)


def _peak_rss_mb():
    """This process's peak resident memory (Linux VmHWM; getrusage would report the parent's
    peak, which Linux carries across fork and exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_worker(model, implementation, batch, seconds, threads):
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as workdir:
        steps = build_pair(model, workdir)
        step = steps.pop(implementation)
        steps.clear()  # the other implementation's model and optimizer
        gc.collect()
        inputs, targets = make_batch(model, batch, seconds)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # reset VmHWM: count from here, with one model in memory
        step(inputs, targets)
        step(inputs, targets)
    print(json.dumps({"peak_mb": _peak_rss_mb()}))


def peak_rss(model, implementation, batch, seconds, threads):
    command = [sys.executable, __file__, "--rss-worker", model, implementation, str(batch), str(seconds),
               "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(INPUTS), default=["frcrn", "mossformer"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--rss-worker", nargs=4, metavar=("MODEL", "IMPL", "BATCH", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_worker:
        model, implementation, batch, seconds = args.rss_worker
        return _rss_worker(model, implementation, int(batch), float(seconds), args.threads)

    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as workdir:
            steps = build_pair(model, workdir)
            for batch, seconds in INPUTS[model]:
                inputs, targets = make_batch(model, batch, seconds)
                times = {name: [] for name in steps}
                for name, step in steps.items():  # warm-up: allocations and kernel choice
                    step(inputs, targets)
                for _ in range(args.repeats):
                    for name, step in steps.items():
                        start = time.perf_counter()
                        step(inputs, targets)
                        times[name].append(time.perf_counter() - start)
                ref, ours = min(times["reference"]), min(times["ours"])
                rss = "" if args.no_rss else " | ".join(
                    f"{peak_rss(model, name, batch, seconds, args.threads):.0f} MB" for name in ("reference", "ours"))
                rows.append(f"| {model} | B={batch}, {seconds:g} s | {ref:.2f} s | {ours:.2f} s | "
                            f"{ours / ref:.2f} |" + (f" {rss} |" if rss else ""))
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"Training step (forward + official loss + backward + Adam), official sizes, random weights; "
          f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, fastest of {args.repeats} alternating steps\n")
    header = "| model | batch | reference | ours | ours/ref |"
    print(header + ("" if args.no_rss else " reference peak RSS | ours peak RSS |"))
    print("|---|---|---|---|---|" + ("" if args.no_rss else "---|---|"))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
