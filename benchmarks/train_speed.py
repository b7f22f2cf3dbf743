"""Training step speed: ours vs the reference (ModelScope), official sizes, train mode.

One training step is what the recipes run per batch: forward, the official loss, backward and an
Adam step. FRCRN's loss is the official 'Mix' loss (``FRCRN.loss`` of the reference,
:func:`speechbrain_ext.lobes.models.frcrn.frcrn_loss` for ours); MossFormer's is SpeechBrain's
permutation-invariant SI-SNR (``get_si_snr_with_pitwrapper``), as both training codes use. Both
models get identical weights and identical batches. Each implementation runs in processes of its
own, as its training code runs it: ours inside :func:`speechbrain_ext.memory.recycled_memory`, as
``RecipeBrain.fit`` runs every recipe (freed pages are reused from step to step instead of being
faulted in again), the reference with the allocator's defaults. Processes alternate (reference,
ours, ours, reference, ...) so that machine noise reaches both alike; each runs a warm-up step and
``--repeats`` timed steps, and the fastest step is reported, with the largest peak RSS (counted
after the other implementation's model is freed, so that it is that model's own; Linux).

Usage::

    python benchmarks/train_speed.py                      # both models, two lengths each
    python benchmarks/train_speed.py --models frcrn --rounds 4

Prints a markdown table.
"""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from machine import cpu_description

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


def _worker(model, implementation, batch, seconds, steps, threads):
    """One implementation's training steps in this process, as its training code runs them:
    ours inside :func:`~speechbrain_ext.memory.recycled_memory` (as ``RecipeBrain.fit``), the
    reference with the allocator's defaults. Prints the step times and the peak RSS as JSON."""
    from speechbrain_ext.memory import recycled_memory

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as workdir:
        pair = build_pair(model, workdir)
        step = pair.pop(implementation)
        pair.clear()  # the other implementation's model and optimizer
        gc.collect()
        inputs, targets = make_batch(model, batch, seconds)
        if os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")  # reset VmHWM: count from here, with one model in memory
        times = []
        with recycled_memory(enabled=implementation == "ours"):
            step(inputs, targets)  # warm-up: allocations and kernel choice
            for _ in range(steps):
                start = time.perf_counter()
                step(inputs, targets)
                times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "peak_mb": _peak_rss_mb()}))


def run_worker(model, implementation, batch, seconds, steps, threads):
    command = [sys.executable, __file__, "--worker", model, implementation, str(batch), str(seconds),
               "--repeats", str(steps), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(INPUTS), default=["frcrn", "mossformer"])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per implementation and input, in the order ABBA...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "IMPL", "BATCH", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, implementation, batch, seconds = args.worker
        return _worker(model, implementation, int(batch), float(seconds), args.repeats, args.threads)

    rows = []
    for model in args.models:
        for batch, seconds in INPUTS[model]:
            times, peaks = {"reference": [], "ours": []}, {"reference": [], "ours": []}
            for round_ in range(args.rounds):
                order = ("reference", "ours") if round_ % 2 == 0 else ("ours", "reference")
                for name in order:
                    result = run_worker(model, name, batch, seconds, args.repeats, args.threads)
                    times[name] += result["times"]
                    peaks[name].append(result["peak_mb"])
            ref, ours = min(times["reference"]), min(times["ours"])
            rows.append(f"| {model} | B={batch}, {seconds:g} s | {ref:.2f} s | {ours:.2f} s | {ours / ref:.2f} | "
                        f"{max(peaks['reference']):.0f} MB | {max(peaks['ours']):.0f} MB |")
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"Training step (forward + official loss + backward + Adam), official sizes, random weights; "
          f"CPU {cpu_description()}, torch {torch.__version__}, "
          f"{args.threads} threads, fastest of {args.rounds * args.repeats} steps per implementation "
          f"({args.rounds} processes each, alternating, one warm-up step each)\n")
    print("| model | batch | reference | ours | ours/ref | reference peak RSS | ours peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
