"""Learning proof of the separation recipe: the small MossFormer, trained on CPU for a fixed time
budget on generated two-voice mixtures, must reach >= 6 dB SI-SNRi on a held-out generated set.

What runs is the recipe itself (recipes/WSJ0Mix/separation/train.py with
hparams/mossformer_small.yaml: 64 channels, 4 blocks, 0.16 M parameters) on a miniature
wsj0-2mix folder written by its ``synthetic_wsj0mix.py``: generated voices of distinct speakers,
mixed as wsj0-2mix mixes them, each mixture a lower and a higher voice. Training takes random
2 s segments of the training mixtures; the held-out test set mixes *other* speakers, from another
seed. Training stops before an epoch that would end past ``--minutes`` (the recipe's
``max_train_minutes``); the recipe then scores the best checkpoint on the held-out set (SDR,
SDRi, SI-SNR, SI-SNRi: ``test_results.csv``). This script prints the held-out SI-SNRi, writes
the validation learning curve (``learning_curve.csv`` and ``learning_curve.png``) and exits 0
when the SI-SNRi reaches ``--target_db``.

Usage: python benchmarks/separation_learning.py [--minutes 30] [--threads 2] [--output results/separation_learning]

Every run starts afresh in ``OUTPUT/train`` (the generated data in ``OUTPUT/wsj0-mix`` is kept
and reused).
"""

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "WSJ0Mix", "separation")

# Generated data: 40 training speakers (tr, cv) and 10 held-out speakers (tt); every mixture
# pairs a lower and a higher voice (as speechbrain_ext.synthetic.two_speaker_mixture).
DATA = dict(
    num_mixtures={"tr": 400, "cv": 16, "tt": 30}, num_train_speakers=40, num_test_speakers=10,
    utterances_per_speaker=8, utterance_seconds=(2.0, 4.0), sample_rates=(8000,), modes=("min",),
    pitch_contrast=True, seed=1,
)
# Recipe settings for a CPU run of the small model: random 2 s segments of the training
# mixtures, batches of 4 (an epoch = 100 steps), no speed perturbation (CPU time goes to training).
TRAINING = [
    "--segment_seconds", "2.0", "--batch_size", "4", "--num_workers", "0", "--number_of_epochs", "100000",
    "--use_speedperturb", "False", "--ckpt_interval_minutes", "5", "--n_audio_to_save", "5", "--noprogressbar",
]


def load_synthetic_wsj0mix():
    spec = importlib.util.spec_from_file_location(
        "wsj0mix_recipe_synthetic_wsj0mix", os.path.join(RECIPE, "synthetic_wsj0mix.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_data(folder):
    """The miniature wsj0-2mix folder (reused when a previous run finished writing it)."""
    done = os.path.join(folder, "generated.json")
    recipe = json.loads(json.dumps(DATA))
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as stream:
            if json.load(stream) == recipe:
                return folder
    shutil.rmtree(folder, ignore_errors=True)
    load_synthetic_wsj0mix().make_synthetic_wsj0mix(folder, **DATA)
    with open(done, "w", encoding="utf-8") as stream:
        json.dump(recipe, stream)
    return folder


def write_curve(history, launched, csv_path, png_path, target_db):
    """Validation SI-SNR improvement against time since the recipe was launched (``launched``,
    a ``time.time()``)."""
    points = [((entry["time"] - launched) / 60, entry["epoch"], entry["train"]["loss"], entry["valid"]["loss"],
               entry["valid"]["si-snr_i"]) for entry in history]
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["minutes", "epoch", "train_loss", "valid_loss", "valid_si_snr_improvement_db"])
        writer.writerows(points)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([p[0] for p in points], [p[4] for p in points], marker="o", markersize=3, label="validation SI-SNRi")
    axis.axhline(target_db, color="grey", linestyle="--", label=f"target {target_db:g} dB")
    axis.set_xlabel("minutes since the recipe started")
    axis.set_ylabel("SI-SNR improvement (dB)")
    axis.set_title("MossFormer small on generated two-voice mixtures (CPU)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--output", default=os.path.join(ROOT, "results", "separation_learning"), help="working folder")
    parser.add_argument("--target_db", type=float, default=6.0, help="SI-SNR improvement to reach (default: 6)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    data = generate_data(os.path.join(args.output, "wsj0-mix", "2speakers"))
    print(f"data ready in {time.monotonic() - started:.0f} s: {data}")
    train_folder = os.path.join(args.output, "train")
    shutil.rmtree(train_folder, ignore_errors=True)
    command = [sys.executable, "train.py", "hparams/mossformer_small.yaml", "--data_folder", data,
               "--output_folder", train_folder, "--max_train_minutes", str(args.minutes), *TRAINING]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("running:", " ".join(command), flush=True)
    launched = time.time()
    subprocess.run(command, cwd=RECIPE, env=env, check=True)
    print(f"recipe finished in {(time.time() - launched) / 60:.1f} min (training budget {args.minutes:g} min)")

    with open(os.path.join(train_folder, "history.jsonl"), encoding="utf-8") as stream:
        history = [json.loads(line) for line in stream]
    png = write_curve(history, launched, os.path.join(args.output, "learning_curve.csv"),
                      os.path.join(args.output, "learning_curve.png"), args.target_db)
    with open(os.path.join(train_folder, "test_results.csv"), newline="", encoding="utf-8") as stream:
        average = [row for row in csv.DictReader(stream) if row["snt_id"] == "avg"][0]
    improvement = float(average["si-snr_i"])
    last = history[-1]
    print(f"epochs: {last['epoch']}, steps in the last: {last['steps']}, "
          f"last validation SI-SNRi: {last['valid']['si-snr_i']:.2f} dB")
    print(f"held-out set ({DATA['num_mixtures']['tt']} mixtures of {DATA['num_test_speakers']} unseen speakers): "
          f"SI-SNR {float(average['si-snr']):.2f} dB, SDR {float(average['sdr']):.2f} dB, "
          f"SDRi {float(average['sdr_i']):.2f} dB")
    print(f"SI-SNR improvement: {improvement:.2f} dB (target >= {args.target_db:g} dB): "
          f"{'PASS' if improvement >= args.target_db else 'FAIL'}")
    print(f"learning curve: {png}")
    return 0 if improvement >= args.target_db else 1


if __name__ == "__main__":
    sys.exit(main())
