"""Long-file inference: wall time and peak RSS of enhance_file / separate_file vs audio length.

Official-size models with seeded random weights; each run in its own subprocess (peak RSS of
that process alone). Input files are written block by block, so making a 60 min file needs
no memory either. Prints a markdown table with the real-time factor (RTF = compute / audio).

Usage: python benchmarks/long_audio.py [--enhance 10 600 3600] [--separate 10 600]
       [--separate-mossformer2 10 120] [--enhance-mossformer2 10 600] [--threads 2]
Durations are in seconds. Goals: peak RSS at 60 min <= 1.3x the 10 s figure and <= 2.5 GB;
RTF at 60 min within 1.2x of RTF at 10 min.
"""

import argparse
import json
import os
import resource
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


def write_test_file(path, seconds, rate, seed=0, noisy_speech=True):
    """Speech-like signal plus pink noise, written 10 s at a time."""
    from speechbrain_ext.synthetic import mix_at_snr, pink_noise, speech_like, two_speaker_mixture

    block = 10.0
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as out:
        remaining, index = seconds, 0
        while remaining > 0:
            length = min(block, remaining)
            if noisy_speech:  # else a two-talker mixture
                clean = speech_like(length, rate, seed=seed + index)
                audio, _ = mix_at_snr(clean, pink_noise(length, rate, seed=seed + index + 1), 5)
            else:
                audio, _ = two_speaker_mixture(length, rate, seed=seed + index)
            out.write(audio.astype(np.float32))
            remaining -= length
            index += 1


def _worker(task, model_dir, path, outdir, threads):
    torch.set_num_threads(threads)
    from speechbrain_ext.inference import EnhanceFRCRN, EnhanceMossFormer2, SeparateMossFormer

    start, cpu_start = time.perf_counter(), time.process_time()
    if task.startswith("enhance"):
        enhancer = EnhanceMossFormer2 if task == "enhance-mossformer2" else EnhanceFRCRN
        enhancer.from_hparams(source=model_dir).enhance_file(path, os.path.join(outdir, "out.wav"))
    else:
        SeparateMossFormer.from_hparams(source=model_dir).separate_file(path, savedir=outdir)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # CPU time (all threads, user + system) as well as wall time: less sensitive to a shared machine.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"time": elapsed, "cpu": cpu, "peak_mb": peak_mb}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enhance", type=float, nargs="*", default=[10, 600, 3600])
    parser.add_argument("--separate", type=float, nargs="*", default=[10, 600])
    parser.add_argument("--separate-mossformer2", type=float, nargs="*", default=[10, 120])
    parser.add_argument("--enhance-mossformer2", type=float, nargs="*", default=[10, 600])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("TASK", "MODEL", "INPUT", "OUTDIR"))
    args = parser.parse_args()
    if args.worker:
        return _worker(*args.worker, args.threads)

    from conftest import make_reference_frcrn, make_reference_mossformer, make_reference_mossformer2, \
        make_reference_mossformer2_se
    from speechbrain_ext.convert import mossformer2_from_official, mossformer2_se_from_official, \
        mossformer2_se_to_official, mossformer2_to_official

    rows = []
    with tempfile.TemporaryDirectory() as work:
        frcrn_dir = os.path.join(work, "frcrn")
        os.makedirs(frcrn_dir)
        torch.save(make_reference_frcrn(seed=0).state_dict(), os.path.join(frcrn_dir, "pytorch_model.bin"))
        mossformer_dir = os.path.join(work, "mossformer")
        make_reference_mossformer(mossformer_dir, seed=0)
        # ClearerVoice-Studio folders of the MossFormer2 models (official size, random weights).
        mossformer2_dir, mossformer2_se_dir = os.path.join(work, "mossformer2"), os.path.join(work, "mossformer2_se")
        mossformer2_to_official(mossformer2_from_official(make_reference_mossformer2(512, 24).state_dict()),
                                mossformer2_dir, sample_rate=16000)
        mossformer2_se_to_official(mossformer2_se_from_official(make_reference_mossformer2_se().state_dict()),
                                   mossformer2_se_dir, sample_rate=48000)
        for task, durations, rate, model_dir in (("enhance", args.enhance, 16000, frcrn_dir),
                                                 ("separate", args.separate, 8000, mossformer_dir),
                                                 ("separate-mossformer2", args.separate_mossformer2, 16000,
                                                  mossformer2_dir),
                                                 ("enhance-mossformer2", args.enhance_mossformer2, 48000,
                                                  mossformer2_se_dir)):
            for seconds in durations:
                path = os.path.join(work, f"{task}_{seconds:g}.wav")
                write_test_file(path, seconds, rate, noisy_speech=task.startswith("enhance"))
                outdir = os.path.join(work, f"out_{task}_{seconds:g}")
                command = [sys.executable, __file__, "--threads", str(args.threads),
                           "--worker", task, model_dir, path, outdir]
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                stats = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append(f"| {task} | {seconds / 60:g} min | {stats['time']:.1f} s | "
                            f"{stats['time'] / seconds:.3f} | {stats['cpu'] / seconds:.3f} | "
                            f"{stats['peak_mb']:.0f} MB |")
                print(rows[-1], flush=True)
                os.remove(path)
    print(f"\nOfficial-size models, random weights; {cpu_description()}, "
          f"torch {torch.__version__}, {args.threads} threads, default chunking (enhancers 10 s; MossFormer 30 s, MossFormer2 15 s)\n")
    print("| task | audio | wall time | RTF (wall) | RTF (CPU time) | peak RSS |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
