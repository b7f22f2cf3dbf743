#!/usr/bin/env python3
"""A miniature wsj0-2mix / wsj0-3mix folder made of generated voices.

It has the real layout and naming, so the recipe runs on it unchanged (tests, demos and
``benchmarks/separation_learning.py`` use it where the real data, made from the licensed
WSJ0 corpus, is not at hand)::

    <root>/{wav8k,wav16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2[,s3]}/<utt1>_<gain1>_<utt2>_<gain2>.wav

Every "speaker" is a ``speech_like`` voice of its own pitch; an utterance id is the speaker's
3-character id followed by 5 characters (``100c0203``), as in wsj0, so dynamic mixing can tell
speakers apart from the file names. As in wsj0-2mix, ``tr`` and ``cv`` mix utterances of the
training speakers and ``tt`` of other speakers; the sources get equal power and then gains of
``+g`` and ``-g`` dB (``g`` uniform in 0..2.5 dB, written in the name), and everything is scaled
so that nothing peaks above 0.9. ``min`` mixtures are as long as their shortest utterance, ``max``
ones as the longest (the others padded with zeros).

Usage: python synthetic_wsj0mix.py OUTPUT_FOLDER [--num_spks 2] [--train 8] [--valid 2] [--test 2]

Authors
 * speechbrain-ext contributors
"""

import argparse
import os

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechbrain_ext.synthetic import speech_like

RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}
PEAK = 0.9
# Offset that makes the test material independent of the training material.
TEST_SEED_OFFSET = 1_000_003


def _voices(count, first_index, rng):
    """``count`` speakers: (3-character id, base pitch in Hz), pitches spread over 90-250 Hz."""
    pitches = np.geomspace(90.0, 250.0, count) * rng.uniform(0.95, 1.05, count)
    return [(f"{first_index + i:03d}"[-3:], float(pitch)) for i, pitch in enumerate(rng.permutation(pitches))]


def _utterance(voice, index, seconds_range, rate, rng):
    speaker, pitch = voice
    seconds = rng.uniform(*seconds_range)
    signal = speech_like(seconds, rate, seed=int(rng.integers(2**31 - 1)), f0=pitch)
    return f"{speaker}c02{index:02d}", signal.astype(np.float64)


def _power(signal):
    return float(np.mean(signal**2)) if signal.size else 0.0


def _mixture(utterances, mode, rng):
    """``(name, sources [S, T])``: equal-power sources with +/- gains, cut (min) or padded (max)."""
    gain = rng.uniform(0.0, 2.5)
    gains = [gain, -gain] + [float(rng.uniform(-2.5, 2.5)) for _ in utterances[2:]]
    length = (min if mode == "min" else max)(len(signal) for _, signal in utterances)
    sources = np.zeros((len(utterances), length))
    for row, ((_, signal), gain_db) in enumerate(zip(utterances, gains)):
        signal = signal[:length] / np.sqrt(max(_power(signal), 1e-12)) * 10 ** (gain_db / 20)
        sources[row, : len(signal)] = signal
    name = "_".join(f"{utt}_{gain_db:.5f}" for (utt, _), gain_db in zip(utterances, gains))
    return name, sources


def _write(path, signal, rate):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, signal, rate, subtype="PCM_16")


def make_synthetic_wsj0mix(
    root,
    num_spks=2,
    num_mixtures=None,
    num_train_speakers=6,
    num_test_speakers=4,
    utterances_per_speaker=4,
    utterance_seconds=(1.0, 1.5),
    sample_rates=(8000,),
    modes=("min",),
    pitch_contrast=False,
    seed=0,
):
    """Write a wsj0-mix-shaped folder of generated voices under ``root``; returns ``root``.

    Arguments
    ---------
    root : str
        Output folder (the ``2speakers`` / ``3speakers`` folder of wsj0-mix).
    num_spks : int
        Speakers per mixture (2 or 3; 3 adds ``s3``).
    num_mixtures : dict, optional
        Mixtures per subset, ``{'tr': 8, 'cv': 2, 'tt': 2}`` by default.
    num_train_speakers, num_test_speakers : int
        Speakers of ``tr``/``cv`` and of ``tt``.
    utterances_per_speaker : int
        Utterances generated per speaker (each mixture picks among them).
    utterance_seconds : tuple of float
        Range of the utterance lengths.
    sample_rates : tuple of int
        8000 and/or 16000 (the highest is generated, the other resampled from it).
    modes : tuple of str
        ``min`` and/or ``max``.
    pitch_contrast : bool
        Mix voices of different pitch registers: the speakers, sorted by pitch, are cut into
        ``num_spks`` groups and every mixture takes one speaker of each (like
        ``speechbrain_ext.synthetic.two_speaker_mixture``'s low and high voice). By default
        any ``num_spks`` different speakers are mixed.
    seed : int
        Seed of the training material; the test material uses an independent stream.

    Example
    -------
    >>> import tempfile
    >>> root = make_synthetic_wsj0mix(tempfile.mkdtemp(), num_mixtures={"tr": 2, "cv": 1, "tt": 1})
    >>> sorted(os.listdir(os.path.join(root, "wav8k", "min", "tr")))
    ['mix', 's1', 's2']
    >>> name = os.listdir(os.path.join(root, "wav8k", "min", "tt", "mix"))[0]
    >>> len(name.split("_")), name.endswith(".wav")
    (4, True)
    """
    num_mixtures = {"tr": 8, "cv": 2, "tt": 2, **(num_mixtures or {})}
    if num_spks not in (2, 3):
        raise ValueError(f"num_spks must be 2 or 3, got {num_spks}")
    top_rate = max(sample_rates)
    train_rng = np.random.default_rng(seed)
    test_rng = np.random.default_rng(seed + TEST_SEED_OFFSET)
    speakers = {
        "train": _voices(num_train_speakers, 100, train_rng),
        "test": _voices(num_test_speakers, 500, test_rng),
    }
    utterances = {
        group: [
            [_utterance(voice, index, utterance_seconds, top_rate, rng) for index in range(utterances_per_speaker)]
            for voice in voices
        ]
        for (group, voices), rng in zip(speakers.items(), (train_rng, test_rng))
    }
    for split, count in num_mixtures.items():
        group, rng = ("test", test_rng) if split == "tt" else ("train", train_rng)
        pool = utterances[group]
        if len(pool) < num_spks:
            raise ValueError(f"{len(pool)} {group} speakers cannot make {num_spks}-speaker mixtures")
        by_pitch = np.argsort([pitch for _, pitch in speakers[group]])
        registers = np.array_split(by_pitch, num_spks)
        for _ in range(count):
            if pitch_contrast:
                chosen = rng.permutation([int(rng.choice(register)) for register in registers])
            else:
                chosen = rng.choice(len(pool), size=num_spks, replace=False)
            picked = [pool[s][int(rng.integers(len(pool[s])))] for s in chosen]
            for mode in modes:
                name, sources = _mixture(picked, mode, np.random.default_rng(rng.integers(2**31 - 1)))
                for rate in sample_rates:
                    scaled = sources if rate == top_rate else resample_poly(sources, rate, top_rate, axis=-1)
                    mixture = scaled.sum(0)
                    scale = PEAK / max(np.max(np.abs(mixture)), np.max(np.abs(scaled)), 1e-8)
                    folder = os.path.join(root, RATE_FOLDERS[rate], mode, split)
                    _write(os.path.join(folder, "mix", f"{name}.wav"), mixture * scale, rate)
                    for index, source in enumerate(scaled):
                        _write(os.path.join(folder, f"s{index + 1}", f"{name}.wav"), source * scale, rate)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--num_spks", type=int, default=2)
    parser.add_argument("--train", type=int, default=8, help="tr mixtures")
    parser.add_argument("--valid", type=int, default=2, help="cv mixtures")
    parser.add_argument("--test", type=int, default=2, help="tt mixtures")
    parser.add_argument("--num_train_speakers", type=int, default=6)
    parser.add_argument("--num_test_speakers", type=int, default=4)
    parser.add_argument("--utterances_per_speaker", type=int, default=4)
    parser.add_argument("--sample_rates", type=int, nargs="+", default=[8000])
    parser.add_argument("--modes", nargs="+", default=["min"])
    parser.add_argument("--pitch_contrast", action="store_true", help="mix voices of different pitch registers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_synthetic_wsj0mix(
        args.root, num_spks=args.num_spks, num_mixtures={"tr": args.train, "cv": args.valid, "tt": args.test},
        num_train_speakers=args.num_train_speakers, num_test_speakers=args.num_test_speakers,
        utterances_per_speaker=args.utterances_per_speaker, sample_rates=tuple(args.sample_rates),
        modes=tuple(args.modes), pitch_contrast=args.pitch_contrast, seed=args.seed,
    ))
