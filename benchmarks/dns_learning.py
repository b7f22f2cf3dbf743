"""Learning proof of the DNS recipe: the small FRCRN, trained on CPU for a fixed time budget on
generated speech and noise, must improve SI-SNR on a held-out generated set by >= 6 dB.

What runs is the recipe itself (recipes/DNS/enhancement/train.py with hparams/frcrn_small.yaml)
on a miniature DNS-Challenge folder written by its ``synthetic_dns.py``: training material and
the held-out test set come from different seeds. Training stops before an epoch that would
end past ``--minutes`` (the recipe's ``max_train_minutes``); the recipe then scores the best
checkpoint on the held-out set (PESQ, STOI, SI-SNR). This script prints the held-out SI-SNR
improvement, writes the validation learning curve (``learning_curve.csv`` and, with
matplotlib, ``learning_curve.png``) and exits 0 when the improvement reaches ``--target_db``.

Usage: python benchmarks/dns_learning.py [--minutes 30] [--threads 2] [--output results/dns_learning] [--causal]

``--causal`` trains the causal variant (``FRCRN(causal=True)``, the same small widths): the
weights :class:`speechbrain_ext.inference.streaming.FRCRNStreamer` and ``enhance --stream`` run.

Every run starts afresh in ``OUTPUT/train`` (the generated data in ``OUTPUT/DNS-Challenge``
is kept and reused).
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

from speechbrain_ext.evaluation import summary_path_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "DNS", "enhancement")

# Generated data: training material and held-out test set from different seeds.
TRAIN_SEED, TEST_SEED = 1, 2
DATA = dict(
    num_clean=120, clean_seconds=4.0, num_noise=25, noise_seconds=10.0,
    noise_types=("white", "pink", "babble", "hum", "clicks"), num_rirs=0,
    num_test=20, test_seconds=4.0, test_snr_range=(-5.0, 5.0), with_reverb_test=False,
)
# Recipe settings for a CPU run of the small model (frcrn_small.yaml: 16 channels).
TRAINING = [
    "--segment_seconds", "1.0", "--batch_size", "4", "--num_workers", "0", "--number_of_epochs", "100000",
    "--num_valid_mixtures", "24", "--snr_range_db", "[-5.0, 10.0]", "--test_subsets", "[no_reverb]",
    "--ckpt_interval_minutes", "5", "--noprogressbar",
]


def load_synthetic_dns():
    spec = importlib.util.spec_from_file_location("dns_recipe_synthetic_dns", os.path.join(RECIPE, "synthetic_dns.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_data(folder):
    """The miniature DNS folder (reused when a previous run finished writing it)."""
    done = os.path.join(folder, "generated.json")
    recipe = json.loads(json.dumps({**DATA, "seeds": [TRAIN_SEED, TEST_SEED]}))
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as stream:
            if json.load(stream) == recipe:
                return folder
    shutil.rmtree(folder, ignore_errors=True)
    load_synthetic_dns().make_synthetic_dns(folder, seed=TRAIN_SEED, test_seed=TEST_SEED, **DATA)
    with open(done, "w", encoding="utf-8") as stream:
        json.dump(recipe, stream)
    return folder


def write_curve(history, launched, csv_path, png_path, target_db):
    """Validation SI-SNR improvement against time since the recipe was launched (``launched``,
    a ``time.time()``); the PNG only if matplotlib is installed."""
    points = [((entry["time"] - launched) / 60, entry["epoch"], entry["train"]["loss"], entry["valid"]["loss"],
               entry["valid"]["si_snr_improvement"]) for entry in history]
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["minutes", "epoch", "train_loss", "valid_loss", "valid_si_snr_improvement_db"])
        writer.writerows(points)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no PNG, the curve is in {csv_path}")
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([p[0] for p in points], [p[4] for p in points], marker="o", markersize=3, label="validation SI-SNRi")
    axis.axhline(target_db, color="grey", linestyle="--", label=f"target {target_db:g} dB")
    axis.set_xlabel("minutes since the recipe started")
    axis.set_ylabel("SI-SNR improvement (dB)")
    axis.set_title("FRCRN small on generated speech + noise (CPU)")
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
    parser.add_argument("--output", default=os.path.join(ROOT, "results", "dns_learning"), help="working folder")
    parser.add_argument("--target_db", type=float, default=6.0, help="SI-SNR improvement to reach (default: 6)")
    parser.add_argument("--causal", action="store_true", help="train the causal (streaming) variant")
    args = parser.parse_args(argv)

    started = time.monotonic()
    data = generate_data(os.path.join(args.output, "DNS-Challenge"))
    print(f"data ready in {time.monotonic() - started:.0f} s: {data}")
    train_folder = os.path.join(args.output, "train")
    shutil.rmtree(train_folder, ignore_errors=True)
    command = [sys.executable, "train.py", "hparams/frcrn_small.yaml", "--data_folder", data,
               "--output_folder", train_folder, "--max_train_minutes", str(args.minutes), *TRAINING]
    if args.causal:
        command += ["--causal", "True"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("running:", " ".join(command), flush=True)
    launched = time.time()
    subprocess.run(command, cwd=RECIPE, env=env, check=True)
    print(f"recipe finished in {(time.time() - launched) / 60:.1f} min (training budget {args.minutes:g} min)")

    with open(os.path.join(train_folder, "history.jsonl"), encoding="utf-8") as stream:
        history = [json.loads(line) for line in stream]
    png = write_curve(history, launched, os.path.join(args.output, "learning_curve.csv"),
                      os.path.join(args.output, "learning_curve.png"), args.target_db)
    summary_csv = summary_path_for(os.path.join(train_folder, "test_results_no_reverb.csv"))  # the recipe's CSV
    with open(summary_csv, newline="", encoding="utf-8") as s:
        summary = {row["system"]: row for row in csv.DictReader(s)}
    improvement = float(summary["enhanced"]["si_snr_improvement"])
    print(f"epochs: {history[-1]['epoch']}, last validation SI-SNRi: {history[-1]['valid']['si_snr_improvement']:.2f} dB")
    print(f"held-out set ({DATA['num_test']} files, SNR {DATA['test_snr_range'][0]:g}..{DATA['test_snr_range'][1]:g} dB): "
          f"SI-SNR noisy {float(summary['noisy']['si_snr']):.2f} dB -> enhanced "
          f"{float(summary['enhanced']['si_snr']):.2f} dB; PESQ-WB {float(summary['noisy']['pesq_wb']):.2f} -> "
          f"{float(summary['enhanced']['pesq_wb']):.2f}; STOI {float(summary['noisy']['stoi']):.3f} -> "
          f"{float(summary['enhanced']['stoi']):.3f}")
    print(f"SI-SNR improvement: {improvement:.2f} dB (target >= {args.target_db:g} dB): "
          f"{'PASS' if improvement >= args.target_db else 'FAIL'}")
    if png:
        print(f"learning curve: {png}")
    return 0 if improvement >= args.target_db else 1


if __name__ == "__main__":
    sys.exit(main())
