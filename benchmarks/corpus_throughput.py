"""Corpus throughput: seconds of audio enhanced per wall second by the ``speechbrain-ext enhance``
command, one file per pass vs short files packed, one process vs two under torchrun.

Official-size FRCRN with seeded random weights (an official-layout folder; ``--model`` takes
any other source), generated noisy speech. Every configuration runs the real command in a fresh
output folder, one after the other, each process with ``--threads`` threads (torchrun's own
default is 1). Two numbers per run: audio seconds / wall seconds of the whole command (start-up
and model loading included), and audio seconds / the seconds the files took (the manifest's
``seconds`` summed over each process, divided by the processes: the engine without start-up).

Usage: python benchmarks/corpus_throughput.py [--files 200] [--min-seconds 1] [--max-seconds 30]
       [--short-files 40] [--short-max-seconds 5] [--batch-size 8] [--threads 1] [--device cpu]
Goals (issue 18): packed batches >= 1.5x one file per pass for files under 5 s; two processes
>= 1.7x one process on a 2-core machine, one thread each.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from machine import cpu_description

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # seeded reference models (conftest)
CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")


def write_corpus(folder, count, low, high, seed):
    """``count`` noisy speech files of lengths spread evenly over [low, high] s (shuffled)."""
    from speechbrain_ext.synthetic import mix_at_snr, pink_noise, speech_like

    os.makedirs(folder)
    rng = np.random.RandomState(seed)
    lengths = rng.permutation(np.linspace(low, high, count))
    for index, seconds in enumerate(lengths):
        clean = speech_like(seconds, 16000, seed=seed + index)
        audio, _ = mix_at_snr(clean, pink_noise(seconds, 16000, seed=seed + index + 1), 5)
        sf.write(os.path.join(folder, f"utt{index:04d}.wav"), audio.astype(np.float32), 16000)
    return float(lengths.sum())


def run(corpus, audio_seconds, model, processes, batch_size, threads, device, work, label):
    out, manifest = os.path.join(work, f"out-{label}"), os.path.join(work, f"{label}.csv")
    launcher = [CLI] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             f"--nproc_per_node={processes}", "-m", "speechbrain_ext.cli"]
    command = [*launcher, "enhance", corpus, "-o", out, "--model", model, "--batch-size", str(batch_size),
               "--manifest-out", manifest, "--quiet", "--device", device]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    with open(manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert all(row["status"] == "done" for row in rows), "a file failed"
    busy = sum(float(row["seconds"]) for row in rows) / processes
    return wall, audio_seconds / wall, audio_seconds / busy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200, help="files of the mixed corpus")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--short-files", type=int, default=40, help="files of the short corpus")
    parser.add_argument("--short-max-seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=8, help="files per pass when packed")
    parser.add_argument("--threads", type=int, default=1, help="threads of each process")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (each torchrun process takes its own GPU)")
    parser.add_argument("--model", help="a model source (default: official-size FRCRN, random weights)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        model = args.model
        if model is None:
            from conftest import make_reference_frcrn

            model = os.path.join(work, "frcrn")
            os.makedirs(model)
            torch.save(make_reference_frcrn(seed=0).state_dict(), os.path.join(model, "pytorch_model.bin"))
        short = os.path.join(work, "short")
        short_audio = write_corpus(short, args.short_files, args.min_seconds, args.short_max_seconds, seed=1)
        mixed = os.path.join(work, "mixed")
        mixed_audio = write_corpus(mixed, args.files, args.min_seconds, args.max_seconds, seed=2)
        configs = [
            ("short", short, short_audio, 1, 1), ("short", short, short_audio, 1, args.batch_size),
            ("mixed", mixed, mixed_audio, 1, 1), ("mixed", mixed, mixed_audio, 2, 1),
            ("mixed", mixed, mixed_audio, 2, args.batch_size),
        ]
        print(f"# {cpu_description()}, torch {torch.__version__}, device {args.device}, "
              f"{args.threads} thread(s) per process, model {args.model or 'official-size FRCRN (random weights)'}")
        print("| corpus | audio | processes | files per pass | wall time | audio s / wall s | audio s / busy s |")
        print("|---|---|---|---|---|---|---|")
        for index, (name, folder, audio, processes, batch) in enumerate(configs):
            wall, per_wall, per_busy = run(folder, audio, model, processes, batch, args.threads, args.device, work,
                                           f"{index}")
            files = args.short_files if name == "short" else args.files
            low, high = args.min_seconds, args.short_max_seconds if name == "short" else args.max_seconds
            print(f"| {files} files, {low:g}-{high:g} s | {audio:.0f} s | {processes} | "
                  f"{batch if batch > 1 else 1} | {wall:.1f} s | {per_wall:.2f} | {per_busy:.2f} |", flush=True)


if __name__ == "__main__":
    main()
