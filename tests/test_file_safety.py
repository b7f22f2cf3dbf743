"""What happens to a user's files: nothing is replaced, lost, stranded or hidden.

Each test plays one case a user meets on real folders (CLI and API), with small random-weight
models and generated audio.
"""

import os
import resource
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.errors import AudioOutputError, InvalidOptionError, SpeechBrainExtError
from speechbrain_ext.inference import EnhanceFRCRN, SeparateMossFormer
from speechbrain_ext.audio import OUTPUT_TAG, is_own_output
from speechbrain_ext.synthetic import speech_like

CLI = os.path.join(os.path.dirname(sys.executable), "speechbrain-ext")
MISSING_MODEL = "/nonexistent/model"  # loading it would fail: errors before it prove no model was loaded


def run(*args, umask=None, preexec=None):
    def before():
        if umask is not None:
            os.umask(umask)
        if preexec is not None:
            preexec()

    return subprocess.run([CLI, *map(str, args), "--quiet"], capture_output=True, text=True, preexec_fn=before)


def write_speech(path, seconds=1.0, rate=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech_like(seconds, rate, seed=seed), rate)
    return path


def tree(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def no_traceback(result):
    return "Traceback" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def enhancer(models):
    return EnhanceFRCRN.from_hparams(source=str(models["enhance"]), savedir=str(models["enhance"]))


def test_output_folder_equal_to_input_folder_is_refused(models, tmp_path):
    original = write_speech(tmp_path / "a.wav").read_bytes()
    for extra in ([], ["--overwrite"]):
        result = run("enhance", tmp_path, "-o", tmp_path, "--model", MISSING_MODEL, *extra)
        assert result.returncode != 0 and no_traceback(result)
        assert "is the input folder" in result.stderr and "cannot load model" not in result.stderr
        assert (tmp_path / "a.wav").read_bytes() == original


def test_output_that_would_replace_an_input_file_is_refused(models, tmp_path):
    original = write_speech(tmp_path / "a.wav").read_bytes()
    result = run("enhance", tmp_path / "a.wav", "-o", tmp_path, "--model", models["enhance"], "--overwrite")
    assert result.returncode != 0 and no_traceback(result)
    assert f"{tmp_path / 'a.wav'} would replace the input {tmp_path / 'a.wav'}" in result.stderr
    assert (tmp_path / "a.wav").read_bytes() == original
    with pytest.raises(AudioOutputError, match="it is the input file"):  # the API refuses it too
        EnhanceFRCRN.from_hparams(source=str(models["enhance"]), savedir=str(models["enhance"])).enhance_file(
            tmp_path / "a.wav", tmp_path / "a.wav")
    assert (tmp_path / "a.wav").read_bytes() == original


def test_two_inputs_with_one_output_name_are_refused_naming_both(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for extension in ("flac", "mp3", "ogg"):
        sf.write(inputs / f"a.{extension}", speech_like(0.5, 16000, seed=1), 16000)
    result = run("enhance", inputs, "-o", tmp_path / "out", "--model", MISSING_MODEL)
    assert result.returncode != 0 and no_traceback(result)
    assert f"{inputs / 'a.flac'} and {inputs / 'a.mp3'} would both be written to {tmp_path / 'out' / 'a.wav'}" \
        in result.stderr
    assert f"{inputs / 'a.flac'} and {inputs / 'a.ogg'}" in result.stderr
    assert "Nothing was processed" in result.stderr and "cannot load model" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_output_folder_inside_the_input_folder_is_never_read(models, tmp_path):
    write_speech(tmp_path / "a.wav")
    write_speech(tmp_path / "sub" / "b.wav", seed=1)
    out = tmp_path / "enhanced"
    first = run("enhance", tmp_path, "-o", out, "--model", models["enhance"])
    assert first.returncode == 0 and "2 done, 0 skipped" in first.stdout, first.stdout + first.stderr
    again = run("enhance", tmp_path, "-o", out, "--model", models["enhance"])
    assert again.returncode == 0 and "0 done, 2 skipped (output exists), 0 failed" in again.stdout
    assert tree(out) == ["a.wav", os.path.join("sub", "b.wav")]  # no enhanced/enhanced/...


def test_outputs_get_the_umask_permissions(models, tmp_path):
    write_speech(tmp_path / "in" / "a.wav")
    for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        out = tmp_path / f"out{umask:o}"
        result = run("enhance", tmp_path / "in", "-o", out, "--model", models["enhance"], umask=umask)
        assert result.returncode == 0, result.stdout + result.stderr
        assert stat.S_IMODE(os.stat(out / "a.wav").st_mode) == mode
    separated = tmp_path / "separated"
    sf.write(tmp_path / "mix.wav", speech_like(1.0, 8000, seed=2), 8000)
    result = run("separate", tmp_path / "mix.wav", "-o", separated, "--model", models["separate"], umask=0o022)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [stat.S_IMODE(os.stat(separated / name).st_mode) for name in tree(separated)] == [0o644, 0o644]


def test_kill_9_leaves_nothing_after_the_rerun(models, tmp_path):
    write_speech(tmp_path / "long.wav", seconds=60.0)
    out = tmp_path / "out"
    partial = out / ".long.wav.sbext-partial"
    command = [CLI, "enhance", str(tmp_path / "long.wav"), "-o", str(out), "--model", str(models["enhance"]),
               "--chunk-seconds", "1", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert partial.exists() and not (out / "long.wav").exists()  # killed half-way through the write

    rerun = run("enhance", tmp_path / "long.wav", "-o", out, "--model", models["enhance"], "--chunk-seconds", "10")
    assert rerun.returncode == 0 and "1 done" in rerun.stdout, rerun.stdout + rerun.stderr
    assert tree(out) == ["long.wav"] and sf.info(out / "long.wav").frames == 60 * 16000


def test_stale_temporary_files_are_swept_even_when_the_output_exists(models, tmp_path):
    write_speech(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert run("enhance", tmp_path / "a.wav", "-o", out, "--model", models["enhance"]).returncode == 0
    (out / ".a.wav.sbext-partial").write_bytes(b"left by a killed --overwrite run")
    again = run("enhance", tmp_path / "a.wav", "-o", out, "--model", models["enhance"])
    assert "removed 1 temporary file" in again.stdout and tree(out) == ["a.wav"]


def test_failure_while_opening_the_output_cleans_up(enhancer, tmp_path):
    write_speech(tmp_path / "a.wav")
    with pytest.raises(AudioOutputError, match=r"cannot write .*out\.wav: invalid combination of format"):
        enhancer.enhance_file(tmp_path / "a.wav", tmp_path / "out" / "out.wav", subtype="VORBIS")
    assert tree(tmp_path / "out") == []
    with pytest.raises(AudioOutputError, match="it is a folder"):
        enhancer.enhance_file(tmp_path / "a.wav", tmp_path / "out")


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_write_failure_names_the_file_and_the_reason(models, tmp_path):
    write_speech(tmp_path / "a.wav", seconds=2.0)
    out = tmp_path / "out"
    result = run("enhance", tmp_path / "a.wav", "-o", out, "--model", models["enhance"], preexec=_limit_file_size)
    assert result.returncode == 1 and no_traceback(result)
    assert f"failed: {tmp_path / 'a.wav'}: cannot write {out / 'a.wav'}: file too large" in result.stdout
    assert tree(out) == []  # no partial output, no temporary file


def test_disk_full_says_no_space_left(models, tmp_path):
    small_disk = tmp_path / "disk"
    small_disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small_disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); test_write_failure_... covers the message")
    try:
        write_speech(tmp_path / "a.wav", seconds=5.0)
        result = run("enhance", tmp_path / "a.wav", "-o", small_disk, "--model", models["enhance"])
        assert result.returncode == 1 and no_traceback(result)
        assert f"cannot write {small_disk / 'a.wav'}: no space left on device" in result.stdout
        assert tree(small_disk) == []
    finally:
        subprocess.run(["umount", str(small_disk)], check=True)


@pytest.mark.parametrize("option, value, message", [
    ("--output-rate", "44.1k", "whole number of Hz"),
    ("--output-rate", "0", "whole number of Hz"),
    ("--channels", "left", "'mix', 'all' or a channel index"),
    ("--batch-size", "0", "whole number >= 1"),
    ("--chunk-seconds", "-1", "number of seconds >= 0"),
    ("--block-size", "x", "whole number >= 1"),
])
def test_cli_options_are_validated_before_the_model_loads(tmp_path, option, value, message):
    write_speech(tmp_path / "a.wav")
    result = run("enhance", tmp_path / "a.wav", "-o", tmp_path / "out", "--model", MISSING_MODEL, option, value)
    assert result.returncode == 2 and no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert f"argument {option}" in lines[-1] and message in lines[-1]
    assert not (tmp_path / "out").exists()


def test_api_validates_its_options(enhancer, tmp_path):
    write_speech(tmp_path / "a.wav")
    for bad in ("Input", -1, 22050.5, True):
        with pytest.raises(InvalidOptionError, match="output_rate must be"):
            enhancer.enhance_file(tmp_path / "a.wav", tmp_path / "o.wav", output_rate=bad)
    result = enhancer.enhance_file(tmp_path / "a.wav", tmp_path / "o.wav", output_rate=22050.0)
    assert sf.info(result["path"]).samplerate == 22050
    for option, value in (("channels", "left"), ("batch_size", 0), ("chunk_seconds", -1),
                          ("overlap_seconds", 20.0)):
        with pytest.raises(InvalidOptionError, match=option):
            enhancer.enhance_file(tmp_path / "a.wav", **{option: value})
    assert tree(tmp_path) == ["a.wav", "o.wav"]


def test_enhance_batch_validates_lengths_and_takes_arrays_and_lists(enhancer):
    noisy = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    expected = enhancer.enhance_batch(noisy, torch.tensor([1.0, 0.5]))
    assert torch.allclose(enhancer.enhance_batch(noisy.numpy(), np.array([1.0, 0.5])), expected)
    assert torch.allclose(enhancer.enhance_batch(noisy.tolist(), [1.0, 0.5]), expected)
    with pytest.raises(InvalidOptionError, match="lengths are relative"):
        enhancer.enhance_batch(noisy, torch.tensor([8000, 4000]))
    with pytest.raises(InvalidOptionError, match="lengths are relative"):
        enhancer.enhance_batch(noisy, [1.0, 1.5])
    with pytest.raises(InvalidOptionError, match="1 value.s. for a batch of 2"):
        enhancer.enhance_batch(noisy, [1.0])
    with pytest.raises(InvalidOptionError, match="in \\[0, 1\\]"):
        enhancer.enhance_batch(noisy, [1.0, -0.5])
    with pytest.raises(InvalidOptionError, match="expected a waveform"):
        enhancer.enhance_batch(noisy[None, None])


def test_separate_batch_takes_arrays_and_lists(models):
    separator = SeparateMossFormer.from_hparams(source=str(models["separate"]), savedir=str(models["separate"]))
    mix = 0.1 * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    expected = separator.separate_batch(mix)
    assert torch.allclose(separator.separate_batch(mix.numpy()), expected)
    assert torch.allclose(separator.separate_batch(mix.tolist()), expected)


def test_unsupported_formats_are_counted_and_listed(models, tmp_path):
    write_speech(tmp_path / "in" / "a.wav")
    for name in ("b.m4a", "c.raw", "d.pcm"):
        (tmp_path / "in" / name).write_bytes(b"\0" * 100)
    result = run("enhance", tmp_path / "in", "-o", tmp_path / "out", "--model", models["enhance"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 done, 0 skipped (output exists), 0 failed, 3 skipped (format not supported)" in result.stdout
    for name in ("b.m4a", "c.raw", "d.pcm"):
        assert f"skipped: {tmp_path / 'in' / name}: format not supported" in result.stdout


def test_each_failure_names_its_path_once(models, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    result = run("enhance", tmp_path / "in", "-o", tmp_path / "out", "--model", models["enhance"])
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if "failed:" in line]
    assert lines and all(line.count("broken.wav") == 1 for line in lines), lines


def test_overwrite_replaces_only_our_own_outputs(models, tmp_path):
    write_speech(tmp_path / "a.wav")
    write_speech(tmp_path / "b.wav", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    sf.write(out / "a.wav", np.zeros(100), 16000)  # the user's own file, not one of ours
    users = (out / "a.wav").read_bytes()
    first = run("enhance", tmp_path / "a.wav", tmp_path / "b.wav", "-o", out, "--model", models["enhance"])
    assert "1 done, 1 skipped (output exists)" in first.stdout and is_own_output(out / "b.wav")
    forced = run("enhance", tmp_path / "a.wav", tmp_path / "b.wav", "-o", out, "--model", models["enhance"],
                 "--overwrite")
    assert forced.returncode == 1 and "1 done, 0 skipped (output exists), 1 failed" in forced.stdout
    assert f"{out / 'a.wav'} exists and was not written by speechbrain-ext: not replaced" in forced.stdout
    assert (out / "a.wav").read_bytes() == users
    assert sf.SoundFile(out / "b.wav").software.startswith(OUTPUT_TAG)


def test_our_errors_share_one_base():
    from speechbrain_ext.convert import CheckpointMismatchError
    from speechbrain_ext.evaluation import EvaluationError
    from speechbrain_ext.audio import AudioInputError
    from speechbrain_ext.inference.sources import SourceError

    for error in (AudioInputError, AudioOutputError, InvalidOptionError, SourceError, CheckpointMismatchError,
                  EvaluationError):
        assert issubclass(error, SpeechBrainExtError)
    with pytest.raises(SpeechBrainExtError):
        EnhanceFRCRN.from_hparams(source="iic/speech_mossformer_separation_temporal_8k")
