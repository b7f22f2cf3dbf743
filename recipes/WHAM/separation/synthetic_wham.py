#!/usr/bin/env python3
"""Miniature WHAM! data made of generated noise, for a (miniature) wsj0-2mix folder.

As the WHAM! scripts do for the real corpora, it adds noise to an existing wsj0-2mix folder
(e.g. one written by ``recipes/WSJ0Mix/separation/synthetic_wsj0mix.py``), in the real layouts:

- :func:`make_synthetic_wham_noise`: the noise corpus ``wham_noise/{tr,cv,tt}/<mixture name>.wav``
  (16 kHz, stereo, longer than the mixture) and ``wham_noise/metadata/mix_param_meta_<split>.csv``
  (``utterance_id, noise_samples_beginning_16k, noise_samples_end_16k, target_speaker1_snr_db``);
- :func:`make_synthetic_wham`: the generated WHAM! folder
  ``{wav8k,wav16k}/{min,max}/{tr,cv,tt}/{mix_both,mix_clean,mix_single,s1,s2,noise}``, the noise
  scaled to the metadata's SNR against speaker 1 (by power) and everything scaled down together
  when something would peak above 0.9.

Noises are ``speechbrain_ext.synthetic`` generators (pink, babble, white, hum), one per file.

Usage: python synthetic_wham.py WSJ0MIX_FOLDER WHAM_NOISE_OUTPUT [--wham WHAM_OUTPUT]

Authors
 * speechbrain-ext contributors
"""

import argparse
import csv
import os

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechbrain_ext.synthetic import babble_noise, hum_noise, pink_noise, white_noise

NOISE_RATE = 16000
NOISE_GENERATORS = (pink_noise, babble_noise, white_noise, hum_noise)
SPLITS = ("tr", "cv", "tt")
RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}
PEAK = 0.9


def _mixture_names(wsj0mix_folder, split):
    """Names of the ``split`` mixtures of a wsj0-2mix folder (any rate/mode holding them)."""
    for rate_folder in RATE_FOLDERS.values():
        for mode in ("max", "min"):
            folder = os.path.join(wsj0mix_folder, rate_folder, mode, split, "mix")
            if os.path.isdir(folder):
                return sorted(n for n in os.listdir(folder) if n.endswith(".wav")), folder
    raise FileNotFoundError(f"{wsj0mix_folder} has no {{wav8k,wav16k}}/{{min,max}}/{split}/mix folder")


def make_synthetic_wham_noise(output, wsj0mix_folder, snr_range_db=(-6.0, 3.0), seed=0):
    """Write a WHAM!-noise-shaped folder for the mixtures of ``wsj0mix_folder``; returns ``output``.

    Example
    -------
    >>> import tempfile
    >>> wsj0mix = tempfile.mkdtemp()
    >>> for split in SPLITS:
    ...     os.makedirs(os.path.join(wsj0mix, "wav8k", "min", split, "mix"))
    ...     sf.write(os.path.join(wsj0mix, "wav8k", "min", split, "mix", "a.wav"), np.zeros(8000), 8000)
    >>> noise = make_synthetic_wham_noise(tempfile.mkdtemp(), wsj0mix)
    >>> sorted(os.listdir(noise))
    ['cv', 'metadata', 'tr', 'tt']
    >>> sf.info(os.path.join(noise, "tt", os.listdir(os.path.join(noise, "tt"))[0])).channels
    2
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output, "metadata"), exist_ok=True)
    for split in SPLITS:
        names, mix_folder = _mixture_names(wsj0mix_folder, split)
        rows = []
        for index, name in enumerate(names):
            info = sf.info(os.path.join(mix_folder, name))
            speech = int(np.ceil(info.frames * NOISE_RATE / info.samplerate))
            before, after = int(rng.integers(0, NOISE_RATE // 4)), int(rng.integers(0, NOISE_RATE // 4))
            seconds = (before + speech + after) / NOISE_RATE
            generator = NOISE_GENERATORS[index % len(NOISE_GENERATORS)]
            left = generator(seconds, NOISE_RATE, seed=int(rng.integers(2**31 - 1)))
            right = generator(seconds, NOISE_RATE, seed=int(rng.integers(2**31 - 1)))
            os.makedirs(os.path.join(output, split), exist_ok=True)
            sf.write(os.path.join(output, split, name), np.stack([left, right], axis=1) * 0.5, NOISE_RATE,
                     subtype="FLOAT")
            rows.append({
                "utterance_id": name,
                "noise_samples_beginning_16k": before,
                "noise_samples_end_16k": before + speech,
                "target_speaker1_snr_db": f"{rng.uniform(*snr_range_db):.4f}",
            })
        with open(os.path.join(output, "metadata", f"mix_param_meta_{split}.csv"), "w", newline="",
                  encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return output


def make_synthetic_wham(output, wsj0mix_folder, wham_noise_folder, sample_rates=(8000,), modes=("min",)):
    """Write the generated WHAM! layout from a wsj0-2mix folder and a WHAM! noise folder (as made
    by :func:`make_synthetic_wham_noise`); returns ``output``."""
    for split in SPLITS:
        with open(os.path.join(wham_noise_folder, "metadata", f"mix_param_meta_{split}.csv"), newline="",
                  encoding="utf-8") as stream:
            metadata = {row["utterance_id"]: row for row in csv.DictReader(stream)}
        for rate in sample_rates:
            for mode in modes:
                source_folder = os.path.join(wsj0mix_folder, RATE_FOLDERS[rate], mode, split)
                target_folder = os.path.join(output, RATE_FOLDERS[rate], mode, split)
                for name in sorted(os.listdir(os.path.join(source_folder, "mix"))):
                    s1, _ = sf.read(os.path.join(source_folder, "s1", name))
                    s2, _ = sf.read(os.path.join(source_folder, "s2", name))
                    noise, _ = sf.read(os.path.join(wham_noise_folder, split, name), always_2d=True)
                    start = int(metadata[name]["noise_samples_beginning_16k"])
                    noise = noise[start:, 0]
                    if rate != NOISE_RATE:
                        noise = resample_poly(noise, rate, NOISE_RATE)
                    noise = np.resize(noise, len(s1))
                    snr = float(metadata[name]["target_speaker1_snr_db"])
                    noise = noise * np.sqrt(np.mean(s1**2) / (max(np.mean(noise**2), 1e-12) * 10 ** (snr / 10)))
                    signals = {"s1": s1, "s2": s2, "noise": noise, "mix_clean": s1 + s2, "mix_single": s1 + noise,
                               "mix_both": s1 + s2 + noise}
                    scale = min(1.0, PEAK / max(np.max(np.abs(s)) for s in signals.values()))
                    for folder, signal in signals.items():
                        os.makedirs(os.path.join(target_folder, folder), exist_ok=True)
                        sf.write(os.path.join(target_folder, folder, name), signal * scale, rate, subtype="FLOAT")
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wsj0mix", help="the wsj0-2mix folder (2speakers) to add noise to")
    parser.add_argument("wham_noise", help="output: the WHAM! noise folder")
    parser.add_argument("--wham", help="output: also write the generated WHAM! layout there")
    parser.add_argument("--sample_rates", type=int, nargs="+", default=[8000])
    parser.add_argument("--modes", nargs="+", default=["min"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_synthetic_wham_noise(args.wham_noise, args.wsj0mix, seed=args.seed))
    if args.wham:
        print(make_synthetic_wham(args.wham, args.wsj0mix, args.wham_noise, tuple(args.sample_rates),
                                  tuple(args.modes)))
