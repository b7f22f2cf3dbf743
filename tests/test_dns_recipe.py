"""The DNS enhancement recipe (recipes/DNS/enhancement) end to end, on a miniature DNS layout.

The data is generated (``synthetic_dns.py``: the real folder layout, speech-like signals and
noises); ``train.py`` runs for real in subprocesses with a tiny model and 1 s segments, one
thread per process so the suite stays light on a shared 2-core machine.
"""

import csv
import doctest
import glob
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from speechbrain_ext.convert import frcrn_from_official
from speechbrain_ext.inference import EnhanceFRCRN
from speechbrain_ext.lobes.models.frcrn import frcrn_loss

from conftest import make_reference_frcrn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "DNS", "enhancement")
PYTHON = sys.executable

# The tiny model and data settings every run shares (8-channel UNet, 1 s segments).
TINY = [
    "--channels", "8", "--fsmn_hidden", "8", "--segment_seconds", "1.0", "--num_workers", "0",
    "--num_valid_mixtures", "2", "--noprogressbar", "--ckpt_interval_minutes", "0",
]
NUM_CLEAN = 12  # one is held out for validation: 11 training files


def load_recipe_module(name):
    """Import a recipe file under a unique module name (other recipes have same-named files)."""
    spec = importlib.util.spec_from_file_location(f"dns_recipe_{name}", os.path.join(RECIPE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_dns = load_recipe_module("prepare_dns")
synthetic_dns = load_recipe_module("synthetic_dns")


@pytest.fixture(scope="module")
def dns_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("DNS-Challenge"))
    return synthetic_dns.make_synthetic_dns(root, num_clean=NUM_CLEAN, clean_seconds=1.5, num_noise=4, num_rirs=2,
                                            num_test=2, test_seconds=1.0, seed=0)


def recipe_command(hparams_file, data_folder, output_folder, *overrides):
    return [PYTHON, "train.py", f"hparams/{hparams_file}", "--data_folder", data_folder,
            "--output_folder", str(output_folder), *overrides]


def recipe_env():
    # One thread per process: 2 threads on 2 busy cores is several times slower, not faster.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_recipe(command, timeout=240):
    result = subprocess.run(command, cwd=RECIPE, env=recipe_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"recipe failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def history(output_folder):
    with open(os.path.join(output_folder, "history.jsonl"), encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def checkpoints(output_folder):
    return sorted(glob.glob(os.path.join(output_folder, "save", "CKPT+*")))


def read_meta(checkpoint):
    with open(os.path.join(checkpoint, "CKPT.yaml"), encoding="utf-8") as stream:
        return yaml.safe_load(stream) or {}


def latest_checkpoint(output_folder):
    """The checkpoint saved last, by its recorded save time as SpeechBrain orders them: names
    are not in save order when several fall in one second (a freed ``+NN`` suffix is reused)."""
    return max(checkpoints(output_folder), key=lambda c: read_meta(c)["unixtime"])


def complete_intra_epoch_checkpoint(output_folder):
    """An intra-epoch checkpoint with every file written, or None."""
    expected = ("model", "counter", "lr_scheduler", "brain", "dataloader-TRAIN", "optimizer", "complete")
    for checkpoint in checkpoints(output_folder):
        try:
            meta = read_meta(checkpoint)
        except (OSError, yaml.YAMLError):
            continue
        if meta.get("brain_intra_epoch_ckpt") and all(
            os.path.isfile(os.path.join(checkpoint, f"{name}.ckpt")) for name in expected
        ):
            return checkpoint
    return None


def assert_evaluation_written(output_folder, subset, files=2, dnsmos=True):
    with open(os.path.join(output_folder, f"test_results_{subset}.csv"), newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["id"] for row in rows] == [f"fileid_{i}" for i in range(files)] + ["avg"]
    for row in rows:
        dnsmos_columns = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "dnsmos_ovrl_noisy")
        for metric in ("pesq_wb", "pesq_nb", "stoi", "si_snr", "si_snr_noisy", "si_snr_improvement",
                       *(dnsmos_columns if dnsmos else ())):
            assert math.isfinite(float(row[metric])), (metric, row)
    with open(os.path.join(output_folder, f"test_results_{subset}_summary.csv"), newline="", encoding="utf-8") as s:
        summary = list(csv.DictReader(s))
    assert [row["system"] for row in summary] == ["noisy", "enhanced"]
    if dnsmos:  # the DNS-Challenge's own metric (the recipe's yamls: test_dnsmos: True)
        assert all(1 <= float(row["dnsmos_ovrl"]) <= 5 for row in summary)
    else:
        assert "dnsmos_ovrl" not in summary[0]
    with open(os.path.join(output_folder, f"test_spectrograms_{subset}.png"), "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(os.listdir(os.path.join(output_folder, "enhanced", subset))) == files


def test_recipe_trains_resumes_mid_epoch_and_evaluates(dns_folder, tmp_path):
    output = tmp_path / "run"
    command = recipe_command(
        "frcrn_small.yaml", dns_folder, output, *TINY, "--batch_size", "1", "--number_of_epochs", "2",
        "--reverb_probability", "0.5", "--ckpt_interval_steps", "4", "--keep_last_epochs", "2",
    )
    # First run: killed (SIGKILL, no clean-up) once a mid-epoch checkpoint is on disk.
    process = subprocess.Popen(command, cwd=RECIPE, env=recipe_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while (checkpoint := complete_intra_epoch_checkpoint(output)) is None:
            assert process.poll() is None, f"the run ended before an intra-epoch checkpoint:\n{process.stderr.read()}"
            assert time.monotonic() < deadline, "no intra-epoch checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    with open(os.path.join(checkpoint, "brain.ckpt"), encoding="utf-8") as stream:
        saved_step = yaml.safe_load(stream)["step"]
    assert 0 < saved_step < NUM_CLEAN - 1
    assert not os.path.exists(os.path.join(output, "history.jsonl"))  # killed within epoch 1

    # Same command again: it continues epoch 1 where the checkpoint left it, then epoch 2.
    run_recipe(command)
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [1, 2]
    assert epochs[0]["resumed_at_step"] == saved_step
    assert epochs[0]["steps"] == NUM_CLEAN - 1  # the whole epoch, counted across both runs
    assert epochs[1]["resumed_at_step"] == 0 and epochs[1]["steps"] == NUM_CLEAN - 1
    for entry in epochs:
        assert all(math.isfinite(v) for v in [entry["train"]["loss"], *entry["valid"].values()])
    with open(os.path.join(output, "train_log.txt"), encoding="utf-8") as stream:
        log_lines = stream.read().splitlines()
    assert [line.split(",")[0] for line in log_lines if line.startswith("epoch")] == ["epoch: 1", "epoch: 2"]
    assert "resumed at step: " + str(saved_step) in log_lines[0]
    latest = latest_checkpoint(output)
    assert read_meta(latest)["epoch"] == 2 and not read_meta(latest).get("brain_intra_epoch_ckpt")
    with open(os.path.join(latest, "counter.ckpt"), encoding="utf-8") as stream:
        assert stream.read().strip() == "2"
    for subset in ("no_reverb", "with_reverb"):
        assert_evaluation_written(output, subset)

    # A newer checkpoint whose save was interrupted (truncated file, no completeness marker)
    # must not be loaded: it is deleted at start.
    broken = os.path.join(output, "save", "CKPT+2099-01-01+00-00-00+00")
    shutil.copytree(latest, broken)
    os.remove(os.path.join(broken, "complete.ckpt"))
    with open(os.path.join(broken, "optimizer.ckpt"), "r+b") as stream:
        stream.truncate(100)
    with open(os.path.join(broken, "CKPT.yaml"), "w", encoding="utf-8") as stream:
        yaml.safe_dump({**read_meta(latest), "unixtime": time.time() + 3600}, stream)

    # More epochs asked for: it goes on from the end-of-epoch checkpoint (epoch 3 only).
    run_recipe(command[: command.index("--number_of_epochs")] + ["--number_of_epochs", "3"]
               + command[command.index("--number_of_epochs") + 2 :])
    assert [entry["epoch"] for entry in history(output)] == [1, 2, 3]
    assert not os.path.exists(broken)
    # The best model is exported (the second run's export replaced by the third's).
    best = min((c for c in checkpoints(output) if "loss" in read_meta(c)), key=lambda c: read_meta(c)["loss"])
    # Kept: the best and the last two end-of-epoch checkpoints (--keep_last_epochs 2).
    kept = {read_meta(c)["epoch"] for c in checkpoints(output) if read_meta(c).get("end-of-epoch")}
    assert kept == {2, 3, read_meta(best)["epoch"]}
    exported = os.path.join(output, "model")
    loaded = EnhanceFRCRN.from_hparams(source=exported, savedir=exported)
    saved = torch.load(os.path.join(best, "model.ckpt"), weights_only=True)
    state = loaded.mods.model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    assert not [name for name in os.listdir(output) if name.endswith(".sbext-partial")]


def test_manifests_are_idempotent_and_follow_the_options(dns_folder, tmp_path):
    save = str(tmp_path / "save")
    options = dict(data_folder=dns_folder, save_folder=save, segment_samples=16000, num_valid_mixtures=3, seed=1)
    manifests = prepare_dns.prepare_dns(**options)
    assert set(manifests) == {"train", "valid", "noise_train", "test_no_reverb", "test_with_reverb"}
    with open(manifests["train"], newline="", encoding="utf-8") as stream:
        train_rows = list(csv.DictReader(stream))
    assert len(train_rows) == NUM_CLEAN - 1 and train_rows[0]["frames"] == "24000"
    with open(manifests["test_no_reverb"], newline="", encoding="utf-8") as stream:
        pairs = list(csv.DictReader(stream))
    for pair in pairs:  # paired by fileid
        fileid = pair["ID"].split("_")[-1]
        assert pair["noisy_wav"].endswith(f"_fileid_{fileid}.wav")
        assert os.path.basename(pair["clean_wav"]) == f"clean_fileid_{fileid}.wav"
    modified = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(save, "*"))}

    time.sleep(0.05)
    assert prepare_dns.prepare_dns(**options) == manifests  # same options: nothing rewritten
    assert {path: os.path.getmtime(path) for path in glob.glob(os.path.join(save, "*"))} == modified

    # Other options: prepared again (and the validation set follows them).
    prepare_dns.prepare_dns(**{**options, "num_valid_mixtures": 5, "reverb_probability": 0.5})
    with open(manifests["valid"], newline="", encoding="utf-8") as stream:
        assert len(list(csv.DictReader(stream))) == 5
    assert os.path.isfile(os.path.join(save, "rir_train.csv"))
    with open(os.path.join(save, prepare_dns.OPTIONS_FILE), encoding="utf-8") as stream:
        assert json.load(stream)["options"]["num_valid_mixtures"] == 5


def test_not_a_dns_folder_is_one_clear_error(tmp_path):
    not_dns = tmp_path / "my_recordings"
    (not_dns / "wavs").mkdir(parents=True)
    with pytest.raises(prepare_dns.DNSLayoutError, match="is not a DNS-Challenge .* expected datasets/clean"):
        prepare_dns.prepare_dns(str(not_dns), str(tmp_path / "save"), segment_samples=16000)

    result = subprocess.run(recipe_command("frcrn_small.yaml", str(not_dns), tmp_path / "out", *TINY), cwd=RECIPE,
                            env=recipe_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {not_dns} is not a DNS-Challenge")


def test_unpaired_test_set_is_reported(dns_folder, tmp_path):
    noisy = glob.glob(os.path.join(dns_folder, "datasets", "test_set", "synthetic", "no_reverb", "noisy", "*"))[0]
    copy = str(tmp_path / "DNS")
    shutil.copytree(dns_folder, copy)
    os.rename(noisy.replace(dns_folder, copy), noisy.replace(dns_folder, copy).replace("fileid_", "fileid_9"))
    with pytest.raises(prepare_dns.DNSLayoutError, match="no_reverb test set does not pair up: fileid"):
        prepare_dns.prepare_dns(copy, str(tmp_path / "save"), segment_samples=16000)


def test_recipe_under_torchrun_with_two_processes(dns_folder, tmp_path):
    output = tmp_path / "ddp"
    command = recipe_command("frcrn_small.yaml", dns_folder, output, *TINY, "--batch_size", "2",
                             "--number_of_epochs", "1", "--test_subsets", "[no_reverb]",
                             "--distributed_backend=gloo")
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_recipe(torchrun + command[1:], timeout=300)
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [1]  # logged once, by the main process
    # DistributedSampler: each process gets 11 // 2 = 5 files, i.e. 2 batches of 2 (5 steps alone).
    assert epochs[0]["steps"] == 2
    found = checkpoints(output)
    assert len(found) == 1 and read_meta(found[0])["epoch"] == 1
    assert_evaluation_written(output, "no_reverb")


def test_finetuning_starts_from_official_weights(dns_folder, tmp_path):
    reference = make_reference_frcrn(seed=0)
    official = str(tmp_path / "pytorch_model.bin")
    torch.save(reference.state_dict(), official)  # the ModelScope file format
    output = tmp_path / "finetune"
    # The full-size model (the official weights' shape): half-second segments, one update.
    run_recipe(recipe_command(
        "frcrn.yaml", dns_folder, output, "--pretrained_path", official, "--segment_seconds", "0.5",
        "--batch_size", "1", "--num_workers", "0", "--num_valid_mixtures", "2", "--number_of_epochs", "1",
        "--optimizer_step_limit", "1", "--test_subsets", "[]", "--noprogressbar", "--ckpt_interval_minutes", "0",
    ))
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [0, 1]
    assert epochs[1]["lr"] == pytest.approx(1e-4)  # finetune_lr, not lr

    # The loss of the official weights on the same fixed validation mixtures, computed here.
    model = frcrn_from_official(official)
    with open(os.path.join(output, "save", "valid.csv"), newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    losses = []
    with torch.no_grad():
        for row in rows:
            noisy, clean = prepare_dns.validation_mixture(row, segment_samples=8000)
            noisy, clean = noisy[None], clean[None]
            losses.append(float(frcrn_loss(model, model.forward_stages(noisy), noisy, clean)["loss"]))
    assert epochs[0]["valid"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_mossformer2_fullband_finetunes_trains_and_evaluates_at_48k(tmp_path):
    """hparams/mossformer2_se.yaml on the fullband layout (datasets_fullband/, 48 kHz): fine-tuning
    from a ClearerVoice-Studio folder (a tiny MossFormer2SE, random weights), its validation as
    epoch 0 equal to the loss computed here, one epoch, the synthetic test set scored and the
    model exported for EnhanceMossFormer2."""
    from speechbrain_ext.audio import whole_frames_length
    from speechbrain_ext.convert import mossformer2_se_to_official
    from speechbrain_ext.inference import EnhanceMossFormer2
    from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE
    from speechbrain_ext.training.enhancement import negative_si_snr

    from conftest import perturb_

    data = synthetic_dns.make_synthetic_dns(str(tmp_path / "DNS-Challenge"), num_clean=4, clean_seconds=1.0,
                                            num_noise=2, num_rirs=0, num_test=2, test_seconds=0.6,
                                            with_reverb_test=False, seed=4, fullband=True)
    assert os.path.isdir(os.path.join(data, "datasets_fullband", "clean_fullband", "read_speech"))
    tiny = dict(d_model=16, num_blocks=1, group_size=16, query_key_dim=16, fsmn_channels=16)
    torch.manual_seed(0)
    model = perturb_(MossFormer2SE(**tiny), 1)
    mossformer2_se_to_official(model, tmp_path / "MossFormer2_SE_48K", sample_rate=48000)
    output = tmp_path / "run"
    run_recipe(recipe_command(
        "mossformer2_se.yaml", data, output, *(item for k, v in tiny.items() for item in (f"--{k}", str(v))),
        "--pretrained_path", str(tmp_path / "MossFormer2_SE_48K"), "--segment_seconds", "0.5", "--batch_size", "2",
        "--num_workers", "0", "--num_valid_mixtures", "2", "--number_of_epochs", "1", "--test_subsets", "[no_reverb]",
        "--noprogressbar", "--ckpt_interval_minutes", "0",
    ))
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [0, 1]
    assert epochs[1]["lr"] == pytest.approx(1e-5)  # finetune_lr
    with open(os.path.join(output, "save", "valid.csv"), newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    segment = whole_frames_length(24000, 1920, 384, rounding="nearest")  # as train.py: whole frames
    losses = []
    with torch.no_grad():
        for row in rows:
            noisy, clean = prepare_dns.validation_mixture(row, segment_samples=segment, sample_rate=48000)
            losses.append(float(negative_si_snr(model.eval()(noisy[None]), noisy[None], clean[None]).mean()))
    assert epochs[0]["valid"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert_evaluation_written(output, "no_reverb")
    exported = EnhanceMossFormer2.from_hparams(source=str(output / "model"), savedir=str(output / "model"))
    assert exported.sample_rate == 48000 and type(exported.mods.model).__name__ == "MossFormer2SE"
    assert not exported.normalize  # the input level is kept, as for the official model


def test_mossformergan_generator_finetunes_with_the_recipe(dns_folder, tmp_path):
    """hparams/mossformergan.yaml (16 kHz, the generator with the negative SI-SNR loss): fine-tuning
    from a ClearerVoice-Studio folder of a tiny generator, its validation as epoch 0 equal to the
    loss computed here, one epoch, the test sets scored, the model exported for EnhanceMossFormerGAN."""
    from speechbrain_ext.audio import whole_frames_length
    from speechbrain_ext.convert import mossformer_gan_to_official
    from speechbrain_ext.inference import EnhanceMossFormerGAN
    from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE
    from speechbrain_ext.training.enhancement import negative_si_snr

    from conftest import perturb_

    tiny = dict(channels=16, num_blocks=1, hidden_channels=32, query_key_dim=16, qk_channels=3)
    torch.manual_seed(0)
    model = perturb_(MossFormerGANSE(**tiny), 2)
    mossformer_gan_to_official(model, tmp_path / "MossFormerGAN_SE_16K")
    output = tmp_path / "run"
    run_recipe(recipe_command(
        "mossformergan.yaml", dns_folder, output, *(item for k, v in tiny.items() for item in (f"--{k}", str(v))),
        "--pretrained_path", str(tmp_path / "MossFormerGAN_SE_16K"), "--segment_seconds", "0.5", "--batch_size", "2",
        "--num_workers", "0", "--num_valid_mixtures", "2", "--number_of_epochs", "1", "--noprogressbar",
        "--ckpt_interval_minutes", "0",
    ))
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [0, 1]
    with open(os.path.join(output, "save", "valid.csv"), newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    segment = whole_frames_length(8000, 400, 100, rounding="nearest")
    with torch.no_grad():
        losses = [float(negative_si_snr(model.eval()(noisy[None]), noisy[None], clean[None]).mean())
                  for noisy, clean in (prepare_dns.validation_mixture(row, segment_samples=segment) for row in rows)]
    assert epochs[0]["valid"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert_evaluation_written(output, "no_reverb")
    exported = EnhanceMossFormerGAN.from_hparams(source=str(output / "model"), savedir=str(output / "model"))
    assert type(exported.mods.model).__name__ == "MossFormerGANSE" and not exported.normalize


@pytest.mark.parametrize("module", [synthetic_dns], ids=lambda module: module.__name__)
def test_recipe_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_recipe_trains_a_causal_model_that_streams(dns_folder, tmp_path):
    import torch

    from speechbrain_ext.inference.streaming import FRCRNStreamer
    from speechbrain_ext.lobes.models.frcrn import FRCRN

    output = tmp_path / "causal"
    run_recipe(recipe_command("frcrn_small.yaml", dns_folder, output, *TINY, "--causal", "True", "--batch_size", "2",
                              "--number_of_epochs", "1", "--test_subsets", "[no_reverb]"))
    with open(output / "hyperparams.yaml", encoding="utf-8") as stream:
        assert "causal: true" in stream.read()  # the run trained the causal variant
    model = FRCRN(channels=8, fsmn_hidden=8, causal=True)
    model.load_state_dict(torch.load(os.path.join(latest_checkpoint(output), "model.ckpt"), weights_only=True))
    streamer = FRCRNStreamer(model.eval())
    assert streamer.process(torch.zeros(1600)).shape == (1600,)
    assert_evaluation_written(str(output), "no_reverb")


def test_a_model_defined_only_in_a_yaml_trains_with_the_recipe(dns_folder, tmp_path):
    """The house: a stand-in model (a learned FIR filter, tests/hparams/standin_enhancement.yaml)
    trains, validates and is scored by the DNS recipe's train.py with no code of its own."""
    output = tmp_path / "standin"
    standin = os.path.join(ROOT, "tests", "hparams", "standin_enhancement.yaml")
    run_recipe([PYTHON, "train.py", standin, "--data_folder", dns_folder, "--output_folder", str(output),
                "--segment_seconds", "1.0", "--num_workers", "0", "--num_valid_mixtures", "2", "--noprogressbar",
                "--ckpt_interval_minutes", "0", "--batch_size", "2", "--number_of_epochs", "3",
                "--test_subsets", "[no_reverb]"])
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [1, 2, 3]
    for entry in epochs:
        assert all(math.isfinite(v) for v in [entry["train"]["loss"], *entry["valid"].values()])
        assert entry["valid"]["si_snr"] == pytest.approx(-entry["valid"]["loss"], abs=1e-3)  # its loss: -SI-SNR
    assert epochs[-1]["valid"]["loss"] < epochs[0]["valid"]["loss"]  # it learns
    assert_evaluation_written(output, "no_reverb", dnsmos=False)  # a user's yaml without test_dnsmos
    assert not os.path.exists(output / "model")  # no inference_interface named: nothing exported
