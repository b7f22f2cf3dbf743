"""Offline demo weights from synthesised speech, judged on voices and noises they never saw.

The bundled demo models (``speechbrain_ext/pretrained/demo-*``) are what a user without a
network has. This script makes them from the most realistic speech this machine produces
offline and measures them honestly:

1. ``corpus OUT``: many voices of three speech synthesisers from Debian packages (espeak-ng with
   its voice variants, flite's voices, festival's voices; varied text, rate, pitch, level, and
   pitch/tempo perturbation by sox), noises (coloured, hum, clicks, babble of synthetic talkers,
   modulated fan noise, recorded sounds that ship with Debian packages) and room impulse
   responses (pyroomacoustics' image method). Whole voices (of every engine) and whole noise
   types are held out. Writes a DNS-Challenge folder (16 kHz) and a wsj0-2mix folder (8 kHz,
   plus the training voices' utterances for dynamic mixing).
   ``more-voices OUT`` then adds 80 training voices: espeak-ng variants with random formants,
   pitch, breath and roughness, and the flite/festival training voices with their formants
   warped (vocal tract length perturbation), to the DNS folder (with babble of the whole pool)
   and to the dynamic-mixing folder.
2. ``train-frcrn OUT`` / ``train-mossformer OUT``: the project's own recipes
   (``recipes/DNS/enhancement`` with ``hparams/frcrn_small.yaml``, ``recipes/WSJ0Mix/separation``
   with ``hparams/mossformer_small.yaml`` and dynamic mixing) for a CPU time budget.
3. ``evaluate OUT``: the trained models on the held-out voices: per voice and per noise type
   SI-SNRi, PESQ-WB, STOI and DNSMOS (enhancement), SI-SNRi per voice (separation), plus the
   few clips of real human speech that ship with Debian packages (ALSA's and freedesktop's
   channel announcements). Prints markdown tables and writes ``OUT/heldout_*.csv``.

Needs: ``apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k
festvox-us-slt-hts festvox-italp16k festvox-itapc16k festvox-czech-dita festvox-czech-machac
festvox-ca-ona-hts sox wamerican alsa-utils sound-theme-freedesktop`` and
``pip install pyroomacoustics``.

Usage::

    python benchmarks/demo_weights.py corpus results/demo_weights
    python benchmarks/demo_weights.py more-voices results/demo_weights
    OMP_NUM_THREADS=1 python benchmarks/demo_weights.py train-frcrn results/demo_weights --minutes 90 &
    OMP_NUM_THREADS=1 python benchmarks/demo_weights.py train-mossformer results/demo_weights --minutes 90
    python benchmarks/demo_weights.py evaluate results/demo_weights
    python benchmarks/demo_weights.py last-model results/demo_weights/frcrn  # -> frcrn/model_last
    # a further stage, 4 -> 8 blocks, keeping the last 10 epochs, then their average:
    OMP_NUM_THREADS=1 python benchmarks/demo_weights.py continue-mossformer results/demo_weights \
        --start DIR --num-blocks 8 --keep-last-epochs 10 --output mossformer_stage7 --minutes 105
    python benchmarks/demo_weights.py last-model results/demo_weights/mossformer_stage7 --keep-last-epochs 10
"""

import argparse
import copy
import csv
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf

from speechbrain_ext.synthetic import mix_at_snr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes")
RATE = 16000
SEED = 19

# ---- Voices ----------------------------------------------------------------------------
# (3-character id: the speaker for dynamic mixing, engine, voice). Held-out voices come from
# every engine, so the test asks "a voice never heard", not "an engine never heard".
ESPEAK_LANGUAGES = ["en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan"]
ESPEAK_TRAIN_VARIANTS = [
    "m1", "m2", "m3", "m5", "m6", "m7", "f1", "f2", "f4", "klatt", "klatt2", "klatt4", "Andy", "Annie",
    "Denis", "Gene", "Jacky", "Lee", "Mario", "Michael", "Storm", "anika", "belinda", "benjamin", "david",
    "edward", "grandma", "linda", "norbert", "paul",
]
ESPEAK_HELDOUT_VARIANTS = ["f3", "f5", "m4", "klatt3", "max"]
FLITE_TRAIN, FLITE_HELDOUT = ["kal", "kal16", "rms"], ["awb", "slt"]
FESTIVAL_TRAIN = ["kal_diphone", "lp_diphone", "pc_diphone", "czech_dita", "czech_machac", "czech_ph",
                  "upc_ca_ona_hts"]
FESTIVAL_HELDOUT = ["ked_diphone", "cmu_us_slt_arctic_hts"]

TRAIN_UTTERANCES, HELDOUT_UTTERANCES = 40, 24
FIRST_NOISE_FILES, NOISE_FILES_PER_TYPE = 8, 40  # per training noise type, 20 s each
# Noise types: generated (coloured, hum, clicks, tonal alarms/sirens/bells), babble, and the
# recorded sounds that ship with Debian, split by sound: training hears half of them, the test the
# other half. Held out entirely: fan/engine noise, and babble of the held-out voices.
TRAIN_NOISES = ["white", "pink", "brown", "hum", "clicks", "tones", "babble", "recorded"]
HELDOUT_NOISES = ["recorded_unseen", "fan", "babble_unseen"]
RECORDED_SOUNDS = "/usr/share/sounds/freedesktop/stereo/*.oga"
REAL_SPEECH = ["/usr/share/sounds/alsa/*_*.wav", "/usr/share/sounds/freedesktop/stereo/audio-channel-*.oga"]


def voices():
    rng = np.random.default_rng(SEED)
    table = []
    for index, variant in enumerate(ESPEAK_TRAIN_VARIANTS + ESPEAK_HELDOUT_VARIANTS):
        language = ESPEAK_LANGUAGES[int(rng.integers(len(ESPEAK_LANGUAGES)))]
        table.append(dict(id=f"e{index:02d}", engine="espeak-ng", voice=f"{language}+{variant}",
                          heldout=variant in ESPEAK_HELDOUT_VARIANTS))
    for index, voice in enumerate(FLITE_TRAIN + FLITE_HELDOUT):
        table.append(dict(id=f"l{index:02d}", engine="flite", voice=voice, heldout=voice in FLITE_HELDOUT))
    for index, voice in enumerate(FESTIVAL_TRAIN + FESTIVAL_HELDOUT):
        table.append(dict(id=f"v{index:02d}", engine="festival", voice=voice, heldout=voice in FESTIVAL_HELDOUT))
    return table


# More training voices (the ``more-voices`` step): espeak-ng voice variants with random formants,
# pitch, breathiness and roughness (variant files of our own; none is a copy of a held-out one),
# and the flite/festival training voices with their formants warped (vocal tract length
# perturbation: sox's speed, then the pitch moved back near the original).
EXTRA_ESPEAK_VOICES, EXTRA_UTTERANCES = 60, 30
FORMANT_WARPS = (0.87, 1.14)


def random_variant(name, rng):
    """The text of an espeak-ng voice variant file with random voice parameters."""
    female = rng.random() < 0.5
    low = rng.uniform(140, 210) if female else rng.uniform(70, 125)
    lines = ["language variant", f"name {name}", f"gender {'female' if female else 'male'}",
             f"pitch {low:.0f} {low + rng.uniform(40, 110):.0f}"]
    scale = rng.uniform(100, 118) if female else rng.uniform(86, 106)  # vocal tract length
    for formant in range(9):
        lines.append(f"formant {formant} {scale + rng.uniform(-6, 6):.0f} {rng.uniform(60, 110):.0f} "
                     f"{rng.uniform(80, 150):.0f}")
    lines.append("breath " + " ".join(str(int(rng.integers(0, 4))) for _ in range(8)))
    lines.append(f"flutter {int(rng.integers(0, 12))}")
    lines.append(f"roughness {int(rng.integers(0, 5))}")
    if rng.random() < 0.25:  # klatt synthesis (the held-out klatt3 is mode 3: not drawn)
        lines.append(f"klatt {int(rng.choice([1, 2, 4]))}")
    return "\n".join(lines) + "\n"


def extra_voices(espeak_path):
    """The ``more-voices`` table and the text of each random espeak-ng variant file
    (``{name: text}``, to write under ``espeak_path``'s ``espeak-ng-data/voices/!v``):
    random espeak-ng variants and formant-warped flite/festival training voices. All train."""
    rng = np.random.default_rng([SEED, 4])
    table, variants = [], {}
    for index in range(EXTRA_ESPEAK_VOICES):
        name = f"r{index:02d}"
        variants[name] = random_variant(name, rng)
        language = ESPEAK_LANGUAGES[int(rng.integers(len(ESPEAK_LANGUAGES)))]
        table.append(dict(id=name, engine="espeak-ng", voice=f"{language}+{name}", espeak_path=espeak_path,
                          heldout=False))
    originals = [v for v in voices() if v["engine"] != "espeak-ng" and not v["heldout"]]
    for index, (voice, warp) in enumerate((v, w) for v in originals for w in FORMANT_WARPS):
        table.append(dict(voice, id=f"w{index:02d}", warp=warp))
    return table, variants


def more_voices(out, workers=2):
    """Synthesise the extra training voices and add them to the DNS folder (clean speech, and
    babble files of the whole training pool) and to ``dm8k`` (dynamic mixing)."""
    data = os.path.join(out, "espeak")  # a copy of espeak-ng's data with our variants added
    table, variants = extra_voices(data)
    folder = os.path.join(data, "espeak-ng-data", "voices", "!v")
    if not os.path.isdir(folder):
        version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
        shutil.copytree(re.search(r"Data at: (\S+)", version).group(1), os.path.join(data, "espeak-ng-data"))
    for name, text in variants.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as stream:
            stream.write(text)
    train_text, _ = sentences()
    rng = np.random.default_rng([SEED, 5])
    jobs = []
    for voice in table:
        os.makedirs(os.path.join(out, "utterances", voice["id"]), exist_ok=True)
        for index in range(EXTRA_UTTERANCES):
            text = train_text[int(rng.integers(len(train_text)))]
            path = os.path.join(out, "utterances", voice["id"], f"{voice['id']}u{index:03d}.wav")
            jobs.append((voice, text, path, int(rng.integers(2**31 - 1)), True))
    missing = [job for job in jobs if not os.path.isfile(job[2])]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(synthesise, missing, chunksize=8))
    made = [job[2] for job in jobs if os.path.isfile(job[2])]
    datasets = os.path.join(out, "DNS-Challenge", "datasets")
    for path in made:
        shutil.copyfile(path, os.path.join(datasets, "clean", os.path.basename(path)))
        _write(os.path.join(out, "dm8k", os.path.basename(path)), _at_8k(path), 8000)
    pool_paths = sorted(glob.glob(os.path.join(datasets, "clean", "*.wav")))
    babble_rng = np.random.default_rng([SEED, 6])
    for index in range(NOISE_FILES_PER_TYPE, 2 * NOISE_FILES_PER_TYPE):
        _write(os.path.join(datasets, "noise", f"babble_{index:03d}.wav"), babble(pool_paths, 20.0, babble_rng))
    with open(os.path.join(out, "voices_extra.json"), "w", encoding="utf-8") as stream:
        json.dump({"voices": table, "utterances": len(made)}, stream, indent=1)
    print(f"{len(made)} utterances of {len(table)} extra training voices; "
          f"{len(pool_paths)} clean training files, {NOISE_FILES_PER_TYPE} more babble files", flush=True)


# ---- Text ------------------------------------------------------------------------------
def sentences():
    """English sentences of the licence texts on every Debian system, and word salads from
    the system dictionary; split (by hash) into training and held-out text."""
    text = " ".join(open(path, encoding="utf-8", errors="ignore").read()
                    for path in sorted(glob.glob("/usr/share/common-licenses/*")) if os.path.isfile(path))
    text = re.sub(r"\s+", " ", re.sub(r"[^A-Za-z0-9,.;:!?' -]", " ", text))
    pool = set()
    for piece in re.split(r"[.;:!?]", text):
        words = re.sub(r"\([a-z0-9]\)|\b\d+\b", " ", piece).split()
        if 5 <= len(words) <= 22 and sum(w.isalpha() for w in words) >= 0.8 * len(words):
            pool.add(" ".join(words))
    words = [w.strip() for w in open("/usr/share/dict/words", encoding="utf-8", errors="ignore")
             if re.fullmatch(r"[a-z]{2,12}\s*", w)]
    rng = np.random.default_rng(SEED)
    for _ in range(len(pool) // 3):
        pool.add(" ".join(rng.choice(words, int(rng.integers(5, 14)))))
    pool = sorted(pool)
    heldout = [s for s in pool if int(hashlib.md5(s.encode()).hexdigest(), 16) % 5 == 0]
    train = [s for s in pool if int(hashlib.md5(s.encode()).hexdigest(), 16) % 5 != 0]
    return train, heldout


def synthesise(job):
    """One utterance: the engine's output, perturbed by sox, mono 16-bit at 16 kHz; returns
    the path or None when an engine failed on that text."""
    voice, text, path, seed, perturb = job
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        if voice["engine"] == "espeak-ng":
            data = ["--path", voice["espeak_path"]] if "espeak_path" in voice else []  # random variants
            command = ["espeak-ng", *data, "-v", voice["voice"], "-s", str(int(rng.integers(130, 200))),
                       "-p", str(int(rng.integers(25, 75))), "-w", raw, text]
        elif voice["engine"] == "flite":
            command = ["flite", "-voice", voice["voice"], "--setf",
                       f"duration_stretch={rng.uniform(0.85, 1.2):.2f}", "-t", text, "-o", raw]
        else:
            text_file = os.path.join(tmp, "text.txt")
            with open(text_file, "w", encoding="utf-8") as stream:
                stream.write(text)
            command = ["text2wave", "-eval", f"(voice_{voice['voice']})", "-eval",
                       f"(Parameter.set 'Duration_Stretch {rng.uniform(0.85, 1.2):.2f})", text_file, "-o", raw]
        effects = []
        if "warp" in voice:  # formants (vocal tract length) scaled by the warp, pitch near the original's
            effects += ["speed", f"{voice['warp']:.3f}",
                        "pitch", str(int(-1200 * np.log2(voice["warp"]) + rng.integers(-200, 200)))]
        elif perturb and voice["engine"] != "espeak-ng":  # espeak varies rate and pitch itself
            effects += ["pitch", str(int(rng.integers(-250, 250)))]
        if perturb and rng.random() < 0.3:
            effects += ["tempo", f"{rng.uniform(0.9, 1.12):.3f}"]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            subprocess.run(["sox", raw, "-c", "1", "-b", "16", path, *effects, "rate", str(RATE), "norm", "-1"],
                           check=True, capture_output=True, timeout=120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return None
    audio, _ = sf.read(path)
    return path if len(audio) > 0.8 * RATE else None


# ---- Noise and rooms -------------------------------------------------------------------
def coloured(seconds, exponent, rng):
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit peak."""
    spectrum = np.fft.rfft(rng.standard_normal(int(seconds * RATE)))
    freqs = np.maximum(np.fft.rfftfreq(int(seconds * RATE), 1 / RATE), 20.0)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), int(seconds * RATE))
    return noise / np.max(np.abs(noise))


def fan(seconds, rng):
    """A fan or engine: brown-ish noise, slowly modulated, plus its blade-rate harmonics."""
    t = np.arange(int(seconds * RATE)) / RATE
    base = coloured(seconds, 1.5, rng) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t))
    blade = rng.uniform(60, 240)
    tones = sum(rng.uniform(0.05, 0.2) / k * np.sin(2 * np.pi * k * blade * t + rng.uniform(0, 6)) for k in range(1, 6))
    noise = base + tones
    return noise / np.max(np.abs(noise))


def babble(paths, seconds, rng, talkers=(3, 7)):
    """Several talkers (utterances looped to the length) at random levels."""
    length = int(seconds * RATE)
    noise = np.zeros(length)
    for path in rng.choice(paths, int(rng.integers(*talkers)), replace=False):
        audio, _ = sf.read(path)
        audio = np.roll(np.resize(audio, length), int(rng.integers(length)))
        noise += audio / np.sqrt(np.mean(audio**2) + 1e-12) * 10 ** (rng.uniform(-6, 0) / 20)
    return noise / np.max(np.abs(noise))


@functools.lru_cache(maxsize=None)
def _recorded_sounds():
    """The recorded sounds (not the speech ones) and ALSA's noise, mono at 16 kHz."""
    import librosa

    def load(path):
        audio, rate = sf.read(path)
        return librosa.resample(audio.mean(axis=1) if audio.ndim > 1 else audio, orig_sr=rate, target_sr=RATE)

    sounds = [load(p) for p in sorted(glob.glob(RECORDED_SOUNDS)) if "audio-channel" not in p]
    return sounds[0::2], sounds[1::2], load("/usr/share/sounds/alsa/Noise.wav")  # training, held out


def tones(seconds, rng):
    """Generated tonal events: beeping alarms, sirens, bell-like inharmonic strikes and
    ring-tone harmonic stacks, at random times and levels over a faint pink floor."""
    length = int(seconds * RATE)
    noise = 0.05 * coloured(seconds, 1, rng)
    for _ in range(int(rng.integers(4, 10))):
        span = int(rng.uniform(0.1, 2.0) * RATE)
        t = np.arange(span) / RATE
        kind = int(rng.integers(4))
        if kind == 0:  # beeps
            event = np.sin(2 * np.pi * rng.uniform(400, 3000) * t) * (np.sin(2 * np.pi * rng.uniform(2, 8) * t) > 0)
        elif kind == 1:  # siren
            f0, depth, rate = rng.uniform(500, 1500), rng.uniform(100, 600), rng.uniform(0.5, 4)
            event = np.sin(2 * np.pi * np.cumsum(f0 + depth * np.sin(2 * np.pi * rate * t)) / RATE)
        elif kind == 2:  # bell: inharmonic partials, decaying
            f0 = rng.uniform(300, 2000)
            event = sum(np.exp(-t * rng.uniform(2, 8) * k) * np.sin(2 * np.pi * f0 * ratio * t)
                        for k, ratio in enumerate((1.0, 2.76, 5.4, 8.93), start=1))
        else:  # ring tone: a harmonic stack switching notes
            notes = rng.uniform(400, 1200, int(rng.integers(2, 5)))
            f = np.repeat(notes, -(-span // len(notes)))[:span]
            event = sum(np.sin(2 * np.pi * k * np.cumsum(f) / RATE) / k for k in range(1, 4))
        event = event / (np.max(np.abs(event)) + 1e-9) * rng.uniform(0.3, 1.0)
        start = int(rng.integers(0, max(1, length - span)))
        noise[start:start + span] += event[: length - start]
    return noise / np.max(np.abs(noise))


def recorded(seconds, rng, heldout=False):
    """Recorded sounds that ship with Debian (alarms, bells, phones, shutters, ALSA's noise):
    pieces at random times and levels over a faint recorded-noise floor."""
    length = int(seconds * RATE)
    train_sounds, heldout_sounds, floor = _recorded_sounds()
    sounds = heldout_sounds if heldout else train_sounds
    noise = 0.1 * np.resize(floor, length)
    for _ in range(int(rng.integers(4, 10))):
        audio = sounds[int(rng.integers(len(sounds)))][:length]
        start = int(rng.integers(0, length - len(audio) + 1))
        noise[start:start + len(audio)] += audio / (np.max(np.abs(audio)) + 1e-9) * rng.uniform(0.3, 1.0)
    return noise / np.max(np.abs(noise))


def noise_of(kind, seconds, rng, train_paths, heldout_paths):
    from speechbrain_ext.synthetic import click_noise, hum_noise

    seed = int(rng.integers(2**31 - 1))
    if kind in ("white", "pink", "brown"):
        return coloured(seconds, {"white": 0, "pink": 1, "brown": 2}[kind], rng)
    if kind == "hum":
        return hum_noise(seconds, RATE, seed=seed)
    if kind == "clicks":
        return click_noise(seconds, RATE, seed=seed)
    if kind == "babble":
        return babble(train_paths, seconds, rng)
    if kind == "babble_unseen":
        return babble(heldout_paths, seconds, rng, talkers=(3, 6))
    if kind == "fan":
        return fan(seconds, rng)
    if kind == "tones":
        return tones(seconds, rng)
    return recorded(seconds, rng, heldout=kind == "recorded_unseen")


def room_impulse_response(rng):
    """A random shoebox room (pyroomacoustics' image method), RT60 0.2-0.8 s."""
    import pyroomacoustics as pra

    size = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 3.5)])
    rt60 = rng.uniform(0.2, 0.8)
    absorption, max_order = pra.inverse_sabine(rt60, size)
    room = pra.ShoeBox(size, fs=RATE, materials=pra.Material(absorption), max_order=min(max_order, 30))
    source = rng.uniform(0.5, size - 0.5)
    mic = rng.uniform(0.5, size - 0.5)
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0])
    return rir / np.max(np.abs(rir))


def _at_8k(path):
    """A 16 kHz file's audio at 8 kHz (the wsj0-mix folders)."""
    import librosa

    audio, _ = sf.read(path)
    return librosa.resample(audio, orig_sr=RATE, target_sr=8000)


def _write(path, signal, rate=RATE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.asarray(signal, dtype=np.float32), rate, subtype="PCM_16")


# ---- Corpus ----------------------------------------------------------------------------
def make_corpus(out, workers=2, parts=("dns", "wsj0mix")):
    """Synthesise every utterance (kept when already there: the same seeds make the same files),
    then write the DNS and wsj0-2mix folders under ``out`` (each from its own random stream)."""
    rng = np.random.default_rng(SEED)
    train_text, heldout_text = sentences()
    table = voices()
    jobs = []
    for voice in table:
        count = HELDOUT_UTTERANCES if voice["heldout"] else TRAIN_UTTERANCES
        texts = heldout_text if voice["heldout"] else train_text
        for index in range(count):
            text = texts[int(rng.integers(len(texts)))]
            path = os.path.join(out, "utterances", voice["id"], f"{voice['id']}u{index:03d}.wav")
            jobs.append((voice, text, path, int(rng.integers(2**31 - 1)), not voice["heldout"]))
    for voice in table:
        os.makedirs(os.path.join(out, "utterances", voice["id"]), exist_ok=True)
    missing = [job for job in jobs if not os.path.isfile(job[2])]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(synthesise, missing, chunksize=8))
    made = [job[2] for job in jobs if os.path.isfile(job[2])]
    by_voice = {}
    for path in made:
        by_voice.setdefault(os.path.basename(os.path.dirname(path)), []).append(path)
    train_ids = [v["id"] for v in table if not v["heldout"] and v["id"] in by_voice]
    heldout_ids = [v["id"] for v in table if v["heldout"] and v["id"] in by_voice]
    train_paths = [p for v in train_ids for p in by_voice[v]]
    with open(os.path.join(out, "voices.json"), "w", encoding="utf-8") as stream:
        json.dump({"voices": table, "utterances": {k: len(v) for k, v in by_voice.items()}}, stream, indent=1)
    print(f"{len(made)} utterances of {len(by_voice)} voices "
          f"({len(train_ids)} training, {len(heldout_ids)} held out)", flush=True)
    if "dns" in parts:
        shutil.rmtree(os.path.join(out, "DNS-Challenge"), ignore_errors=True)
        make_dns(os.path.join(out, "DNS-Challenge"), by_voice, train_ids, heldout_ids, train_paths,
                 np.random.default_rng([SEED, 1]))
    if "wsj0mix" in parts:
        for folder in ("wsj0-mix", "dm8k"):
            shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
        make_wsj0mix(out, by_voice, train_ids, heldout_ids, np.random.default_rng([SEED, 2]))


def make_dns(root, by_voice, train_ids, heldout_ids, train_paths, rng):
    datasets = os.path.join(root, "datasets")
    for voice in train_ids:
        for path in by_voice[voice]:
            target = os.path.join(datasets, "clean", os.path.basename(path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
    for kind in TRAIN_NOISES:
        for index in range(FIRST_NOISE_FILES):
            _write(os.path.join(datasets, "noise", f"{kind}_{index:03d}.wav"),
                   noise_of(kind, 20.0, rng, train_paths, None))
    for index in range(60):
        _write(os.path.join(datasets, "impulse_responses", "pyroomacoustics", f"room_{index:03d}.wav"),
               room_impulse_response(rng))
    # Held-out test set: every held-out voice under every held-out noise type, SNR 0..10 dB.
    folder = os.path.join(datasets, "test_set", "synthetic", "no_reverb")
    meta, fileid = [], 0
    for voice in heldout_ids:
        others = [p for v in heldout_ids if v != voice for p in by_voice[v][12:]]
        for index, path in enumerate(by_voice[voice][:12]):
            clean, _ = sf.read(path)
            kind = HELDOUT_NOISES[index % len(HELDOUT_NOISES)]
            noise = noise_of(kind, len(clean) / RATE + 0.1, rng, None, others)
            snr = float(rng.uniform(0, 10))
            noisy = mix_at_snr(clean, noise, snr)[0]
            scale = 10 ** (rng.uniform(-30, -18) / 20) / np.sqrt(np.mean(noisy**2))
            scale = min(scale, 0.95 / np.max(np.abs(noisy)))
            _write(os.path.join(folder, "clean", f"clean_fileid_{fileid}.wav"), clean * scale)
            _write(os.path.join(folder, "noisy", f"{voice}_{kind}_snr{round(snr)}_fileid_{fileid}.wav"), noisy * scale)
            meta.append(dict(fileid=fileid, voice=voice, noise=kind, snr=snr))
            fileid += 1
    with open(os.path.join(root, "heldout.json"), "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=1)
    # The rest of the training noise, from a stream of its own so that the held-out test set
    # above (drawn right after the first files) stays the same file for file.
    extra = np.random.default_rng([SEED, 3])
    for kind in TRAIN_NOISES:
        for index in range(FIRST_NOISE_FILES, NOISE_FILES_PER_TYPE):
            _write(os.path.join(datasets, "noise", f"{kind}_{index:03d}.wav"),
                   noise_of(kind, 20.0, extra, train_paths, None))


def make_wsj0mix(out, by_voice, train_ids, heldout_ids, rng):
    """wsj0-2mix layout at 8 kHz: tr/cv from training voices, tt from pairs of held-out voices
    (relative level 0..5 dB); ``dm8k/`` holds the training utterances for dynamic mixing."""
    for voice in train_ids:
        for path in by_voice[voice]:
            _write(os.path.join(out, "dm8k", os.path.basename(path)), _at_8k(path), 8000)
    root = os.path.join(out, "wsj0-mix", "2speakers", "wav8k", "min")
    meta = []
    for split, ids, count in (("tr", train_ids, 200), ("cv", train_ids, 20), ("tt", heldout_ids, 45)):
        for _ in range(count):
            first, second = rng.choice(ids, 2, replace=False)
            paths = [by_voice[first][int(rng.integers(len(by_voice[first])))],
                     by_voice[second][int(rng.integers(len(by_voice[second])))]]
            sources = [_at_8k(p) for p in paths]
            length = min(len(s) for s in sources)
            relative = rng.uniform(0, 5) if split == "tt" else rng.uniform(0, 2.5)
            gains = [relative / 2, -relative / 2]
            sources = np.stack([s[:length] / np.sqrt(np.mean(s[:length] ** 2) + 1e-12) * 10 ** (g / 20)
                                for s, g in zip(sources, gains)])
            mixture = sources.sum(0)
            scale = 0.9 / max(np.max(np.abs(mixture)), np.max(np.abs(sources)))
            name = "_".join(f"{os.path.basename(p)[:-4]}_{g:.5f}" for p, g in zip(paths, gains))
            _write(os.path.join(root, split, "mix", f"{name}.wav"), mixture * scale, 8000)
            for index, source in enumerate(sources):
                _write(os.path.join(root, split, f"s{index + 1}", f"{name}.wav"), source * scale, 8000)
            if split == "tt":
                meta.append(dict(name=name, voices=[str(first), str(second)], relative_db=float(relative)))
    with open(os.path.join(out, "heldout_mixtures.json"), "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=1)


# ---- What the project ships ------------------------------------------------------------
TESTS_DATA = os.path.join(ROOT, "tests", "data")
EXAMPLES = os.path.join(ROOT, "speechbrain_ext", "pretrained", "examples")


def ship(out, clip_seconds=3.0):
    """Copy held-out material into the project: one noisy/clean clip per held-out voice
    (``tests/data/heldout_enhancement``) and four mixtures of held-out voices
    (``tests/data/heldout_separation``), FLAC, cut to ``clip_seconds``; and the examples
    the demo runs (``pretrained/examples``: a held-out voice in fan noise, a held-out noise type
    the model handles; two held-out voices mixed), 4 s."""
    folder = os.path.join(out, "DNS-Challenge", "datasets", "test_set", "synthetic", "no_reverb")
    with open(os.path.join(out, "DNS-Challenge", "heldout.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    target = os.path.join(TESTS_DATA, "heldout_enhancement")
    shutil.rmtree(target, ignore_errors=True)
    chosen = {}
    for item in meta:  # one clip per voice, the noise types taking turns
        voice_index = len(chosen)
        if item["voice"] not in chosen and item["noise"] == HELDOUT_NOISES[voice_index % len(HELDOUT_NOISES)]:
            chosen[item["voice"]] = item
    length = int(clip_seconds * RATE)
    for voice, item in chosen.items():
        clean, _ = sf.read(os.path.join(folder, "clean", f"clean_fileid_{item['fileid']}.wav"))
        noisy, _ = sf.read(glob.glob(os.path.join(folder, "noisy", f"*_fileid_{item['fileid']}.wav"))[0])
        name = f"{voice}_{item['noise']}.flac"
        for role, signal in (("clean", clean), ("noisy", noisy)):
            os.makedirs(os.path.join(target, role), exist_ok=True)
            sf.write(os.path.join(target, role, name), signal[:length], RATE, subtype="PCM_16")
    mixtures = os.path.join(out, "wsj0-mix", "2speakers", "wav8k", "min", "tt")
    with open(os.path.join(out, "heldout_mixtures.json"), encoding="utf-8") as stream:
        mixes = json.load(stream)
    target = os.path.join(TESTS_DATA, "heldout_separation")
    shutil.rmtree(target, ignore_errors=True)
    seen = set()
    picked = []
    for item in mixes:  # four mixtures, no voice twice
        if not seen & set(item["voices"]) and len(picked) < 4:
            picked.append(item)
            seen |= set(item["voices"])
    for item in picked:
        for role in ("mix", "s1", "s2"):
            signal, _ = sf.read(os.path.join(mixtures, role, item["name"] + ".wav"))
            os.makedirs(os.path.join(target, role), exist_ok=True)
            sf.write(os.path.join(target, role, "_".join(item["voices"]) + ".flac"), signal[: int(clip_seconds * 8000)],
                     8000, subtype="PCM_16")
    # The demo's examples: held-out voices, in fan noise at 5 dB and as a two-voice mixture.
    rng = np.random.default_rng(SEED + 2)
    utterances = os.path.join(out, "utterances")
    clean, _ = sf.read(os.path.join(utterances, "l04", "l04u020.wav"))  # flite slt (not an enhancement test target)
    clean = clean[: 4 * RATE]
    noisy = mix_at_snr(clean, fan(len(clean) / RATE + 0.1, rng), 5.0)[0]
    scale = 0.5 / np.max(np.abs(noisy))
    sf.write(os.path.join(EXAMPLES, "noisy.wav"), noisy * scale, RATE, subtype="PCM_16")
    sf.write(os.path.join(EXAMPLES, "noisy_clean.wav"), clean * scale, RATE, subtype="PCM_16")
    pair = [os.path.join(utterances, "v07", "v07u020.wav"), os.path.join(utterances, "e31", "e31u020.wav")]
    sources = [_at_8k(p) for p in pair]  # festival ked_diphone, espeak-ng en-029+f5
    length = min(4 * 8000, *(len(s) for s in sources))
    sources = np.stack([s[:length] / np.sqrt(np.mean(s[:length] ** 2)) * 10 ** (g / 20) for s, g in zip(sources, (1.0, -1.0))])
    scale = 0.9 / max(np.max(np.abs(sources.sum(0))), np.max(np.abs(sources)))
    sf.write(os.path.join(EXAMPLES, "mixture.wav"), sources.sum(0) * scale, 8000, subtype="PCM_16")
    for index, source in enumerate(sources):
        sf.write(os.path.join(EXAMPLES, f"mixture_s{index + 1}.wav"), source * scale, 8000, subtype="PCM_16")
    print(f"wrote {len(chosen)} enhancement clips and {len(picked)} mixtures under {TESTS_DATA}, and the examples")


# ---- Training --------------------------------------------------------------------------
def train_frcrn(out, minutes, output="frcrn", extra=()):
    command = [sys.executable, "train.py", "hparams/frcrn_small.yaml", *extra,
               "--data_folder", os.path.join(out, "DNS-Challenge"), "--output_folder", os.path.join(out, output),
               "--max_train_minutes", str(minutes), "--segment_seconds", "2.0", "--batch_size", "4",
               "--num_workers", "0", "--number_of_epochs", "100000", "--num_valid_mixtures", "24",
               "--snr_range_db", "[-5.0, 15.0]", "--reverb_probability", "0.2", "--test_subsets", "[no_reverb]",
               "--ckpt_interval_minutes", "5", "--noprogressbar"]
    subprocess.run(command, cwd=os.path.join(RECIPES, "DNS", "enhancement"), check=True)


def train_mossformer(out, minutes):
    command = [sys.executable, "train.py", "hparams/mossformer_small.yaml",
               "--data_folder", os.path.join(out, "wsj0-mix", "2speakers"),
               "--output_folder", os.path.join(out, "mossformer"), "--max_train_minutes", str(minutes),
               "--dynamic_mixing", "True", "--base_folder_dm", os.path.join(out, "dm8k"),
               "--segment_seconds", "2.0", "--batch_size", "4", "--num_workers", "0", "--number_of_epochs", "100000",
               "--use_speedperturb", "False", "--ckpt_interval_minutes", "5", "--n_audio_to_save", "3",
               "--noprogressbar"]
    subprocess.run(command, cwd=os.path.join(RECIPES, "WSJ0Mix", "separation"), check=True)


def continue_frcrn(out, minutes, lr=5e-4, start=None, output="frcrn_stage2", mask_loss_weight=1.0, keep_last_epochs=1):
    """A further stage from a trained model's weights (``start``, default the first run's best,
    ``OUT/frcrn/model``; passed to the recipe as official files through ``--pretrained_path``),
    on the current DNS folder, with the recipe's ``mask_loss_weight``. Writes ``OUT/<output>``."""
    import torch

    from speechbrain_ext.convert import frcrn_to_official
    from speechbrain_ext.inference import EnhanceFRCRN

    start = start or os.path.join(out, "frcrn", "model")
    first = EnhanceFRCRN.from_hparams(source=os.path.abspath(start), savedir=tempfile.mkdtemp())
    weights = os.path.join(out, f"{output}_start_official.bin")
    torch.save(frcrn_to_official(first.mods.model), weights)
    train_frcrn(out, minutes, output=output,
                extra=["--pretrained_path", weights, "--finetune_lr", str(lr), "--mask_loss_weight", str(mask_loss_weight),
                       "--keep_last_epochs", str(keep_last_epochs)])


def grown_mossformer(mods, num_blocks):
    """``mods`` (encoder, masknet, decoder) with ``num_blocks`` blocks: after each trained block,
    copies of it (round robin) whose output projection is zero, so each new block adds nothing
    and the grown model computes what the trained one did; training then uses the new depth."""
    import torch

    blocks = list(mods.masknet.blocks)
    if num_blocks < len(blocks):
        raise ValueError(f"cannot grow {len(blocks)} blocks to {num_blocks}")
    grown = [[block] for block in blocks]
    for index in range(num_blocks - len(blocks)):
        new = copy.deepcopy(blocks[index % len(blocks)])
        with torch.no_grad():
            new.to_out.linear.weight.zero_()
            new.to_out.linear.bias.zero_()
        grown[index % len(blocks)].append(new)
    mods.masknet.blocks = torch.nn.ModuleList(block for group in grown for block in group)
    return mods


def continue_mossformer(out, minutes, lr=5e-4, patience=8, start=None, output="mossformer_stage2",
                        speed_perturb=False, num_blocks=None, keep_last_epochs=1):
    """A further stage from a trained model's weights (``start``, default the first run's best,
    ``OUT/mossformer/model``; passed to the recipe as official files through
    ``--pretrained_path``) with a fresh learning rate and a patient plateau schedule: the first
    run's halving (patience 2 on 50-step epochs) had cut the rate 256-fold while validation was
    still noisy. ``speed_perturb``: each source at 95/100/105 % speed (new pitch and tempo: more
    voices). ``num_blocks``: a deeper model, grown from the trained one (:func:`grown_mossformer`).
    Writes ``OUT/<output>``."""
    from speechbrain_ext.convert import mossformer_to_official
    from speechbrain_ext.inference import SeparateMossFormer

    start = start or os.path.join(out, "mossformer", "model")
    first = SeparateMossFormer.from_hparams(source=os.path.abspath(start), savedir=tempfile.mkdtemp())
    num_blocks = num_blocks or len(first.mods.masknet.blocks)
    weights = os.path.join(out, f"{output}_start_official")
    mossformer_to_official(grown_mossformer(first.mods, num_blocks), weights, sample_rate=8000)
    command = [sys.executable, "train.py", "hparams/mossformer_small.yaml",
               "--data_folder", os.path.join(out, "wsj0-mix", "2speakers"),
               "--output_folder", os.path.join(out, output), "--max_train_minutes", str(minutes),
               "--pretrained_path", weights, "--finetune_lr", str(lr), "--lr_scheduler", f"{{patience: {patience}}}",
               "--dynamic_mixing", "True", "--base_folder_dm", os.path.join(out, "dm8k"),
               "--segment_seconds", "2.0", "--batch_size", "4", "--num_workers", "0", "--number_of_epochs", "100000",
               "--use_speedperturb", str(speed_perturb), "--ckpt_interval_minutes", "5", "--n_audio_to_save", "3",
               "--num_blocks", str(num_blocks), "--keep_last_epochs", str(keep_last_epochs), "--noprogressbar"]
    subprocess.run(command, cwd=os.path.join(RECIPES, "WSJ0Mix", "separation"), check=True)


def last_model(run, epochs=1):
    """``RUN/model_last`` (``RUN/model_avg<N>`` for ``epochs`` N > 1): the recipe's exported
    model folder (``RUN/model``, the best validation checkpoint) with the weights of the run's
    last end-of-epoch checkpoint, or the average of its last N (the run must have kept them:
    ``--keep_last_epochs``). The demo runs validate on 20-24 mixtures of training voices, too
    few to tell epochs apart; averaging the last epochs also smooths their noise."""
    import torch
    from speechbrain.utils.checkpoints import Checkpointer, average_checkpoints

    found = Checkpointer(os.path.join(run, "save")).find_checkpoints(
        max_key="epoch", ckpt_predicate=lambda c: c.meta.get("end-of-epoch"), max_num_checkpoints=epochs)
    if len(found) < epochs:
        raise SystemExit(f"{run}: {len(found)} end-of-epoch checkpoints kept, {epochs} asked")
    target = os.path.join(run, "model_last" if epochs == 1 else f"model_avg{epochs}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.path.join(run, "model"), target)
    for name in os.listdir(target):
        if name.endswith(".ckpt"):
            recoverable = name[: -len(".ckpt")]
            averaged = average_checkpoints(found, recoverable)
            torch.save(averaged, os.path.join(target, name))
    epochs_used = ", ".join(str(c.meta["epoch"]) for c in found)
    print(f"{target}: epoch(s) {epochs_used}")
    return target


# ---- Evaluation ------------------------------------------------------------------------
def _table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines)


def _grouped(rows, key, metrics, total=None):
    """Means per value of ``key``, then over all rows (``total``: the count that row shows;
    default the number of rows)."""
    groups = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)

    def means(name, items, count):
        return {key: name, "files": count, **{m: float(np.nanmean([r[m] for r in items])) for m in metrics}}

    return ([means(name, items, len(items)) for name, items in sorted(groups.items())]
            + [means("all", rows, len(rows) if total is None else total)])


def evaluate_frcrn(out, source):
    from speechbrain_ext.evaluation import compute_metrics, dnsmos
    from speechbrain_ext.inference import EnhanceFRCRN

    enhancer = EnhanceFRCRN.from_hparams(source=source, savedir=tempfile.mkdtemp())
    names = {v["id"]: f"{v['engine']} {v['voice']}" for v in voices()}
    folder = os.path.join(out, "DNS-Challenge", "datasets", "test_set", "synthetic", "no_reverb")
    with open(os.path.join(out, "DNS-Challenge", "heldout.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    rows = []
    for item in meta:
        clean, _ = sf.read(os.path.join(folder, "clean", f"clean_fileid_{item['fileid']}.wav"))
        noisy_path = glob.glob(os.path.join(folder, "noisy", f"*_fileid_{item['fileid']}.wav"))[0]
        noisy, _ = sf.read(noisy_path)
        enhanced = enhancer.enhance_file(noisy_path).squeeze().numpy()[: len(clean)]
        scores = compute_metrics(clean, enhanced, RATE, noisy=noisy)
        row = dict(voice=names[item["voice"]], noise=item["noise"], snr=item["snr"], **scores)
        for prefix, signal in (("noisy_", noisy), ("", enhanced)):
            row.update({f"{prefix}{k}": v for k, v in dnsmos(signal, RATE).items()})
        rows.append(row)
    return rows


def evaluate_real_speech(source):
    """The only recordings of real people on the machine: ALSA's and freedesktop's channel
    announcements (two talkers, ~1.4 s each), with held-out noises at 5 dB."""
    import librosa

    from speechbrain_ext.evaluation import compute_metrics
    from speechbrain_ext.inference import EnhanceFRCRN

    enhancer = EnhanceFRCRN.from_hparams(source=source, savedir=tempfile.mkdtemp())
    rng = np.random.default_rng(SEED + 1)
    rows = []
    for path in sorted(p for pattern in REAL_SPEECH for p in glob.glob(pattern)):
        audio, rate = sf.read(path)
        clean = librosa.resample(audio.mean(axis=1) if audio.ndim > 1 else audio, orig_sr=rate, target_sr=RATE)
        for kind in ("recorded_unseen", "fan", "pink"):
            noisy = mix_at_snr(clean, noise_of(kind, len(clean) / RATE + 0.1, rng, None, None), 5.0)[0]
            scale = 0.5 / np.max(np.abs(noisy))
            import torch

            enhanced = enhancer.enhance_batch(torch.tensor(noisy * scale, dtype=torch.float32)[None])
            enhanced = enhanced.squeeze().numpy()[: len(clean)] / scale
            rows.append(dict(noise=kind, **compute_metrics(clean, enhanced, RATE, noisy=noisy)))
    return rows


def evaluate_mossformer(out, source):
    from speechbrain_ext.evaluation import separation_metrics
    from speechbrain_ext.inference import SeparateMossFormer

    separator = SeparateMossFormer.from_hparams(source=source, savedir=tempfile.mkdtemp())
    names = {v["id"]: f"{v['engine']} {v['voice']}" for v in voices()}
    folder = os.path.join(out, "wsj0-mix", "2speakers", "wav8k", "min", "tt")
    with open(os.path.join(out, "heldout_mixtures.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    rows = []
    for item in meta:
        mix, _ = sf.read(os.path.join(folder, "mix", item["name"] + ".wav"))
        sources = np.stack([sf.read(os.path.join(folder, f"s{k}", item["name"] + ".wav"))[0] for k in (1, 2)])
        import torch

        estimates = separator.separate_batch(torch.tensor(mix, dtype=torch.float32)[None])[0].T.numpy()
        scores = separation_metrics(mix, sources, estimates[:, : mix.shape[0]])
        for voice in item["voices"]:
            rows.append(dict(voice=names[voice], **scores))
    return rows


def evaluate(out, frcrn_source, mossformer_source):
    results = {}
    if frcrn_source:
        rows = evaluate_frcrn(out, frcrn_source)
        metrics = ["si_snr_noisy", "si_snr", "si_snr_improvement", "stoi_noisy", "stoi", "pesq_wb_noisy", "pesq_wb",
                   "noisy_dnsmos_ovrl", "dnsmos_ovrl", "noisy_dnsmos_sig", "dnsmos_sig", "noisy_dnsmos_bak",
                   "dnsmos_bak"]
        metrics = [m for m in metrics if m in rows[0]]
        print("\n## FRCRN, held-out voices (every held-out noise type, SNR 0-10 dB)\n")
        print(_table(_grouped(rows, "voice", metrics), ["voice", "files", *metrics]))
        print("\n## FRCRN, held-out noise types (all held-out voices)\n")
        print(_table(_grouped(rows, "noise", metrics), ["noise", "files", *metrics]))
        real = evaluate_real_speech(frcrn_source)
        print("\n## FRCRN, real human speech on this machine (ALSA/freedesktop announcements, 5 dB)\n")
        real_metrics = [m for m in ("si_snr_improvement", "stoi_noisy", "stoi", "pesq_wb_noisy", "pesq_wb")
                        if m in real[0]]
        print(_table(_grouped(real, "noise", real_metrics), ["noise", "files", *real_metrics]))
        results["frcrn"] = rows
        _write_rows(os.path.join(out, "heldout_frcrn.csv"), rows)
    if mossformer_source:
        rows = evaluate_mossformer(out, mossformer_source)
        metrics = ["si-snr_i", "sdr_i"] if "si-snr_i" in rows[0] else [k for k in rows[0] if k != "voice"]
        print("\n## MossFormer, held-out voices (mixtures of two held-out voices, 0-5 dB)\n")
        # every mixture is a row for each of its two voices
        print(_table(_grouped(rows, "voice", metrics, total=len(rows) // 2), ["voice", "files", *metrics]))
        results["mossformer"] = rows
        _write_rows(os.path.join(out, "heldout_mossformer.csv"), rows)
    return results


def _write_rows(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["corpus", "more-voices", "train-frcrn", "continue-frcrn", "train-mossformer",
                                          "continue-mossformer", "last-model", "evaluate", "ship"])
    parser.add_argument("out", help="working folder")
    parser.add_argument("--minutes", type=float, default=90.0, help="training budget (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", default=["dns", "wsj0mix"], choices=["dns", "wsj0mix"],
                        help="corpus: the folders to (re)write (default: both)")
    parser.add_argument("--frcrn", help="enhancement model folder to evaluate (default: OUT/frcrn/model; none: skip)")
    parser.add_argument("--mossformer", help="separation model folder to evaluate (default: OUT/mossformer/model; none: skip)")
    parser.add_argument("--start", help="continue-*: the model folder to start from (default: OUT/<model>/model)")
    parser.add_argument("--output", help="continue-*: the run's folder name under OUT (default: <model>_stage2)")
    parser.add_argument("--speed-perturb", action="store_true", help="continue-mossformer: speed-perturb the sources")
    parser.add_argument("--mask-loss-weight", type=float, default=1.0,
                        help="continue-frcrn: weight of the loss's mask terms (default: %(default)s, the official loss)")
    parser.add_argument("--patience", type=int, default=8,
                        help="continue-mossformer: epochs without a better validation loss before the rate halves "
                             "(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-4, help="continue-*: the starting learning rate (default: %(default)s)")
    parser.add_argument("--num-blocks", type=int,
                        help="continue-mossformer: grow the model to this many blocks (default: the start's)")
    parser.add_argument("--keep-last-epochs", type=int, default=1,
                        help="continue-*: end-of-epoch checkpoints the run keeps (default: %(default)s); "
                             "last-model: how many of the last to average")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    if args.step == "corpus":
        make_corpus(out, parts=args.parts)
    elif args.step == "more-voices":
        more_voices(out)
    elif args.step == "train-frcrn":
        train_frcrn(out, args.minutes)
    elif args.step == "train-mossformer":
        train_mossformer(out, args.minutes)
    elif args.step == "continue-frcrn":
        continue_frcrn(out, args.minutes, lr=args.lr, start=args.start, output=args.output or "frcrn_stage2",
                       mask_loss_weight=args.mask_loss_weight, keep_last_epochs=args.keep_last_epochs)
    elif args.step == "continue-mossformer":
        continue_mossformer(out, args.minutes, lr=args.lr, start=args.start, output=args.output or "mossformer_stage2",
                            speed_perturb=args.speed_perturb, patience=args.patience, num_blocks=args.num_blocks,
                            keep_last_epochs=args.keep_last_epochs)
    elif args.step == "last-model":  # OUT is a training run's folder here
        last_model(out, epochs=args.keep_last_epochs)
    elif args.step == "ship":
        ship(out)
    else:
        sources = {}
        for name in ("frcrn", "mossformer"):  # "none": skip that model
            default = os.path.join(out, name, "model")
            given = getattr(args, name)
            sources[name] = None if given == "none" else given or (default if os.path.isdir(default) else None)
        evaluate(out, sources["frcrn"], sources["mossformer"])


if __name__ == "__main__":
    main()
