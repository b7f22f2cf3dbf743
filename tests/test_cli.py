"""The enhance / separate commands on folders: recursion, resume, summary, bad files."""

import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch

from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.synthetic import speech_like, two_speaker_mixture

from conftest import SMALL_FRCRN_CARD

CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")

def run(*args):
    return subprocess.run([CLI, *map(str, args), "--quiet"], capture_output=True, text=True)


def test_enhance_folder_recursively_resumes_and_reports_failures(models, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    sf.write(inputs / "a.wav", speech_like(1.0, 16000, seed=1), 16000)
    sf.write(inputs / "sub" / "b.flac", speech_like(1.5, 22050, seed=2), 22050)
    (inputs / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(inputs / "tiny.wav", np.zeros(100, dtype=np.float32), 16000)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    out = tmp_path / "out"

    result = run("enhance", inputs, empty_dir, tmp_path / "missing.wav", "-o", out, "--model", models["enhance"])
    assert result.returncode == 1
    assert "2 done, 0 skipped (output exists), 4 failed" in result.stdout
    for reason in ("not a readable audio file", "shorter than one FRCRN frame", "folder holds no audio files",
                   "no such file or folder"):
        assert reason in result.stdout, reason
    assert "Traceback" not in result.stdout + result.stderr
    written = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)
    assert written == ["a.wav", os.path.join("sub", "b.wav")]  # nothing for the failures, no temp files
    assert sf.info(out / "sub" / "b.wav").samplerate == 16000

    again = run("enhance", inputs / "a.wav", "-o", out, "--model", models["enhance"])
    assert again.returncode == 0 and "0 done, 1 skipped" in again.stdout
    forced = run("enhance", inputs / "a.wav", "-o", out, "--model", models["enhance"], "--overwrite",
                 "--output-rate", "input", "--subtype", "FLOAT", "--chunk-seconds", "0")
    assert forced.returncode == 0 and "1 done, 0 skipped" in forced.stdout
    assert sf.info(out / "a.wav").subtype == "FLOAT"


def test_separate_writes_one_file_per_speaker(models, tmp_path):
    mixture, _ = two_speaker_mixture(2.0, 16000, seed=0)
    sf.write(tmp_path / "mix.wav", mixture, 16000)
    result = run("separate", tmp_path / "mix.wav", "-o", tmp_path / "out", "--model", models["separate"],
                 "--chunk-seconds", "0.75", "--batch-size", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for speaker in (1, 2):
        info = sf.info(tmp_path / "out" / f"mix_spk{speaker}.wav")
        assert info.samplerate == 8000 and info.frames == 16000


def test_separate_with_an_official_mossformer2_folder(tmp_path):
    """A ClearerVoice-Studio MossFormer2 folder (small, sized by its configuration.json) at 16 kHz:
    an 8 kHz stereo input comes out as one 16 kHz file per speaker, as the interface writes it."""
    from speechbrain_ext.convert import mossformer2_to_official
    from speechbrain_ext.inference import SeparateMossFormer
    from speechbrain_ext.lobes.models.mossformer2 import MossFormer2

    torch.manual_seed(0)
    model = MossFormer2(in_channels=32, out_channels=32, d_model=32, num_blocks=1, fsmn_channels=16)
    mossformer2_to_official(model, tmp_path / "official", sample_rate=16000)
    mixture, _ = two_speaker_mixture(1.5, 8000, seed=0)
    sf.write(tmp_path / "mix.wav", np.stack([mixture, 0.5 * mixture], axis=1), 8000)
    result = run("separate", tmp_path / "mix.wav", "-o", tmp_path / "out", "--model", tmp_path / "official")
    assert result.returncode == 0, result.stdout + result.stderr
    separator = SeparateMossFormer.from_hparams(source=str(tmp_path / "official"))
    expected = separator.separate_file(str(tmp_path / "mix.wav"), savedir=str(tmp_path / "expected"))
    for speaker, path in enumerate(expected, start=1):
        written, rate = sf.read(tmp_path / "out" / f"mix_spk{speaker}.wav")
        assert rate == 16000 and len(written) == 24000
        assert np.array_equal(written, sf.read(path)[0])


def test_unloadable_model_is_one_sentence(tmp_path):
    result = run("enhance", tmp_path, "-o", tmp_path / "out", "--model", tmp_path / "nothing-here")
    assert result.returncode != 0
    assert "cannot load model" in result.stderr and "Traceback" not in result.stderr


def test_enhance_stream_with_a_causal_model(tmp_path):
    torch.manual_seed(0)
    card = tmp_path / "causal"
    card.mkdir()
    (card / "hyperparams.yaml").write_text(SMALL_FRCRN_CARD.replace("fsmn_hidden: 8", "fsmn_hidden: 8\n    causal: True"))
    torch.save(FRCRN(channels=8, fsmn_hidden=8, causal=True).state_dict(), card / "model.ckpt")
    sf.write(tmp_path / "in.wav", speech_like(1.0, 16000, seed=3), 16000)
    result = run("enhance", tmp_path / "in.wav", "-o", tmp_path / "out", "--model", card, "--stream",
                 "--block-size", "77")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sf.info(tmp_path / "out" / "in.wav").frames == 16000
