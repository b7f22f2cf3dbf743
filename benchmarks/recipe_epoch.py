"""Wall time of a one-epoch recipe run with the official model sizes, on miniature data sets.

Generates a miniature DNS set (12 clean files of 1.5 s, 1 s segments, batch 2) and a miniature
wsj0-2mix set (8 training mixtures, 2 s segments, batch 1) in the real folder layouts, then
runs each recipe's ``train.py`` with its official-size yaml for one epoch (training, fixed
validation, test scoring, model export) and prints the wall time of each run. ``--code`` runs another checkout's package and
recipes (e.g. a ``git worktree`` of an earlier commit), for before/after comparisons.

Usage::

    python benchmarks/recipe_epoch.py
    python benchmarks/recipe_epoch.py --code /tmp/baseline
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

from machine import cpu_description

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(code, recipe, hparams, data, output, overrides, threads):
    env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "train.py", f"hparams/{hparams}", "--data_folder", data, "--output_folder", output,
               "--number_of_epochs", "1", "--num_workers", "0", "--noprogressbar", "--ckpt_interval_minutes", "0",
               *overrides]
    start = time.perf_counter()
    subprocess.run(command, cwd=os.path.join(code, "recipes", recipe), env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=os.path.dirname(HERE), help="checkout whose package and recipes run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    code = os.path.abspath(args.code)
    root = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as work:
        dns = load(os.path.join(root, "recipes", "DNS", "enhancement", "synthetic_dns.py"), "synthetic_dns")
        wsj = load(os.path.join(root, "recipes", "WSJ0Mix", "separation", "synthetic_wsj0mix.py"), "synthetic_wsj0mix")
        dns_folder = dns.make_synthetic_dns(os.path.join(work, "DNS"), num_clean=12, clean_seconds=1.5, num_noise=4,
                                            num_rirs=2, num_test=2, test_seconds=1.0, seed=0)
        wsj_folder = wsj.make_synthetic_wsj0mix(os.path.join(work, "wsj0-mix", "2speakers"),
                                                num_mixtures={"tr": 8, "cv": 2, "tt": 2}, seed=0)
        rows = []
        seconds = run(code, "DNS/enhancement", "frcrn.yaml", dns_folder, os.path.join(work, "out_dns"),
                      ["--segment_seconds", "1.0", "--batch_size", "2", "--num_valid_mixtures", "2",
                       "--test_subsets", "[no_reverb]"], args.threads)
        rows.append(f"| DNS, FRCRN official size | 11 files, 1 s segments, batch 2 | {seconds:.1f} s |")
        seconds = run(code, "WSJ0Mix/separation", "mossformer.yaml", wsj_folder, os.path.join(work, "out_wsj"),
                      ["--segment_seconds", "2.0"], args.threads)
        rows.append(f"| wsj0-2mix, MossFormer official size | 8 mixtures, 2 s segments, batch 1 | {seconds:.1f} s |")
    print(f"One-epoch recipe runs (train + validation + test + export), {code}; CPU "
          f"{cpu_description()}, {args.threads} threads\n")
    print("| recipe | data | wall time |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
