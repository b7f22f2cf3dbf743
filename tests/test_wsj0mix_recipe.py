"""The wsj0-2mix / wsj0-3mix separation recipe (recipes/WSJ0Mix/separation) end to end.

The data is generated (``synthetic_wsj0mix.py``: the real layout and file naming, speech-like
voices of distinct speakers); ``train.py`` runs for real in subprocesses with a tiny MossFormer
(16 channels, one block) on half-second segments, one thread per process so the suite stays
light on a shared 2-core machine. The mixing and the training step's loss handling are checked
in process.
"""

import argparse
import csv
import doctest
import glob
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
import yaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_ext.convert import mossformer_from_official
from speechbrain_ext.cli import add_evaluate_arguments, run_evaluate
from speechbrain_ext.lobes.models.mossformer import MossFormer
from speechbrain_ext.training.mixing import MixLayoutError, SpeakerMixer, SpeakerPool, wsj0_utterances
from speechbrain_ext.training.separation import SeparationBrain

from conftest import make_reference_mossformer, make_reference_mossformer2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "WSJ0Mix", "separation")
PYTHON = sys.executable

# The tiny model (as hparams overrides of mossformer_small.yaml) and the matching keyword
# arguments of the reference / our MossFormer. (The reference's blocks only work with the
# default expansion_factor 4: its output projection always takes 2 * d_model channels.)
TINY_MODEL = {"N_encoder_out": 16, "d_model": 16, "num_blocks": 1, "group_size": 16, "query_key_dim": 16}
TINY_KWARGS = {"in_channels": 16, "out_channels": 16, "d_model": 16, "num_blocks": 1, "group_size": 16,
               "query_key_dim": 16}


def tiny(**model_changes):
    """Command-line overrides of mossformer_small.yaml: the tiny model, short segments, no workers."""
    model = {**TINY_MODEL, **model_changes}
    return [
        *(item for key, value in model.items() for item in (f"--{key}", str(value))),
        "--segment_seconds", "0.5", "--num_workers", "0", "--noprogressbar", "--ckpt_interval_minutes", "0",
    ]


TINY = tiny()
NUM_TRAIN = 8
# hparams/mossformer2.yaml made tiny the same way (the reference MossFormer2 fixes the recurrent
# modules at 256 channels, the group at 256 frames and queries/keys at 128 channels).
TINY_MOSSFORMER2 = tiny(N_encoder_out=16, d_model=16, group_size=256, query_key_dim=128, fsmn_channels=256)


def load_recipe_module(name, recipe=RECIPE, prefix="wsj0mix"):
    """Import a recipe file under a unique module name (other recipes have same-named files)."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_recipe_{name}", os.path.join(recipe, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_data = load_recipe_module("prepare_data")
synthetic_wsj0mix = load_recipe_module("synthetic_wsj0mix")


@pytest.fixture(scope="module")
def wsj0_2mix(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("wsj0-mix") / "2speakers")
    return synthetic_wsj0mix.make_synthetic_wsj0mix(root, num_mixtures={"tr": NUM_TRAIN, "cv": 2, "tt": 2}, seed=0)


def recipe_command(hparams_file, data_folder, output_folder, *overrides):
    return [PYTHON, "train.py", f"hparams/{hparams_file}", "--data_folder", data_folder,
            "--output_folder", str(output_folder), *overrides]


def recipe_env():
    # One thread per process: 2 threads on 2 busy cores is several times slower, not faster.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_recipe(command, cwd=RECIPE, timeout=240):
    result = subprocess.run(command, cwd=cwd, env=recipe_env(), capture_output=True, text=True, timeout=timeout)
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


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def check_test_results(output_folder, data_folder, split_folder="wav8k/min/tt", mixture_folder="mix", num_spks=2):
    """The recipe's test_results.csv, checked: one row per test mixture then avg, finite numbers,
    and the same numbers from ``evaluate --task separation`` on the separated files it saved."""
    rows = read_csv(os.path.join(output_folder, "test_results.csv"))
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(data_folder, split_folder, mixture_folder)))
    assert [row["snt_id"] for row in rows] == names + ["avg"]
    assert list(rows[0]) == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    for row in rows:
        assert all(math.isfinite(float(row[key])) for key in ("sdr", "sdr_i", "si-snr", "si-snr_i")), row
    for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
        assert float(rows[-1][key]) == pytest.approx(np.mean([float(r[key]) for r in rows[:-1]]), abs=2e-4)

    separated = os.path.join(output_folder, "separated")
    speakers = [f"s{i + 1}" for i in range(num_spks)]
    rescored = os.path.join(output_folder, "rescored.csv")
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    status = run_evaluate(parser.parse_args([
        "--task", "separation", "--mix", os.path.join(separated, "mix"),
        "--sources", *(os.path.join(data_folder, split_folder, s) for s in speakers),
        "--estimates", *(os.path.join(separated, s) for s in speakers), "--csv", rescored,
    ]))
    assert status == 0
    for row, again in zip(rows, read_csv(rescored)):
        assert row["snt_id"] == again["snt_id"]
        for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
            assert float(row[key]) == pytest.approx(float(again[key]), abs=2e-3), (key, row, again)
    return rows


def test_recipe_trains_resumes_and_evaluates(wsj0_2mix, tmp_path):
    output = tmp_path / "run"
    command = recipe_command("mossformer_small.yaml", wsj0_2mix, output, *TINY, "--batch_size", "2",
                             "--number_of_epochs", "1")
    run_recipe(command)
    assert [entry["epoch"] for entry in history(output)] == [1]
    assert history(output)[0]["steps"] == NUM_TRAIN // 2
    manifest = read_csv(os.path.join(output, "save", "wsj_tr.csv"))
    assert list(manifest[0]) == ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"]
    assert len(manifest) == NUM_TRAIN and all(os.path.isfile(row["s2_wav"]) for row in manifest)
    first = checkpoints(output)
    assert len(first) == 1 and read_meta(first[0])["epoch"] == 1
    first_weights = torch.load(os.path.join(first[0], "masknet.ckpt"), weights_only=True)

    # A newer checkpoint whose save was interrupted (truncated file, no completeness marker)
    # must not be loaded: it is deleted at start.
    broken = os.path.join(output, "save", "CKPT+2099-01-01+00-00-00+00")
    shutil.copytree(first[0], broken)
    os.remove(os.path.join(broken, "complete.ckpt"))
    with open(os.path.join(broken, "masknet.ckpt"), "r+b") as stream:
        stream.truncate(100)
    with open(os.path.join(broken, "CKPT.yaml"), "w", encoding="utf-8") as stream:
        yaml.safe_dump({**read_meta(first[0]), "unixtime": time.time() + 3600}, stream)

    # More epochs asked for: it goes on from the epoch-1 checkpoint (epoch 2 only).
    index = command.index("--number_of_epochs")
    result = run_recipe(command[:index] + ["--number_of_epochs", "2"] + command[index + 2 :])
    assert not os.path.exists(broken)
    assert f"Loading a checkpoint from {first[0]}" in result.stdout + result.stderr
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [1, 2]
    for entry in epochs:
        assert all(math.isfinite(v) for v in [entry["train"]["loss"], *entry["valid"].values()])
        assert entry["valid"]["si-snr"] == pytest.approx(-entry["valid"]["loss"])
    with open(os.path.join(output, "train_log.txt"), encoding="utf-8") as stream:
        assert [line.split(",")[0] for line in stream if line.startswith("epoch")] == ["epoch: 1", "epoch: 2"]
    latest = latest_checkpoint(output)
    assert read_meta(latest)["epoch"] == 2
    assert not torch.equal(torch.load(os.path.join(latest, "masknet.ckpt"), weights_only=True)["bottleneck.weight"],
                           first_weights["bottleneck.weight"])  # trained on
    check_test_results(output, wsj0_2mix)
    check_exported_model(output)


def check_exported_model(output_folder):
    """``<output_folder>/model`` holds the best checkpoint's weights and loads with from_hparams."""
    from speechbrain_ext.inference import SeparateMossFormer

    best = min((c for c in checkpoints(output_folder) if "loss" in read_meta(c)), key=lambda c: read_meta(c)["loss"])
    exported = os.path.join(output_folder, "model")
    loaded = SeparateMossFormer.from_hparams(source=exported, savedir=exported)
    for name in ("encoder", "masknet", "decoder"):
        saved = torch.load(os.path.join(best, f"{name}.ckpt"), weights_only=True)
        state = loaded.mods[name].state_dict()
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved), name


def test_a_separator_defined_only_in_a_yaml_trains_with_the_recipe(wsj0_2mix, tmp_path):
    """The house: SpeechBrain's own SepFormer parts (tests/hparams/standin_separation.yaml)
    train, validate and are scored by the WSJ0Mix recipe's train.py with no code of their own."""
    output = tmp_path / "standin"
    standin = os.path.join(ROOT, "tests", "hparams", "standin_separation.yaml")
    run_recipe([PYTHON, "train.py", standin, "--data_folder", wsj0_2mix, "--output_folder", str(output),
                "--segment_seconds", "0.5", "--num_workers", "0", "--noprogressbar", "--batch_size", "2",
                "--number_of_epochs", "2", "--use_speedperturb", "False"])
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [1, 2]
    for entry in epochs:
        assert all(math.isfinite(v) for v in [entry["train"]["loss"], *entry["valid"].values()])
        assert entry["valid"]["si-snr"] == pytest.approx(-entry["valid"]["loss"])
    check_test_results(output, wsj0_2mix)
    assert not os.path.exists(output / "model")  # no inference_interface named: nothing exported


def test_three_speakers_dynamic_mixing_speed_perturbation_and_bf16(tmp_path):
    data = synthetic_wsj0mix.make_synthetic_wsj0mix(
        str(tmp_path / "3speakers"), num_spks=3, num_mixtures={"tr": 4, "cv": 1, "tt": 1},
        sample_rates=(16000,), modes=("max",), seed=3,
    )
    output = tmp_path / "run"
    # bf16 autocast: channels >= 24 (oneDNN's bf16 depthwise convolution hangs below 24 on CPU).
    run_recipe(recipe_command(
        "mossformer_small.yaml", data, output, *tiny(N_encoder_out=24, d_model=24, query_key_dim=24), "--num_spks", "3", "--sample_rate", "16000",
        "--mode", "max", "--dynamic_mixing", "True", "--use_speedperturb", "True", "--batch_size", "2",
        "--number_of_epochs", "1", "--precision", "bf16",
    ))
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as stream:
        log = stream.read()
    assert "Dynamic mixing from 6 speakers" in log and "training precision: `--precision=bf16`" in log
    assert list(read_csv(os.path.join(output, "save", "wsj_tt.csv"))[0])[-1] == "s3_wav"
    assert [entry["epoch"] for entry in history(output)] == [1]
    check_test_results(output, data, split_folder="wav16k/max/tt", num_spks=3)


def test_recipe_under_torchrun_with_two_processes(wsj0_2mix, tmp_path):
    output = tmp_path / "ddp"
    command = recipe_command("mossformer_small.yaml", wsj0_2mix, output, *TINY, "--batch_size", "2",
                             "--number_of_epochs", "1", "--dynamic_mixing", "True", "--distributed_backend=gloo")
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_recipe(torchrun + command[1:], timeout=300)
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [1]  # logged once, by the main process
    assert epochs[0]["steps"] == NUM_TRAIN // 2 // 2  # each process: 4 items, 2 batches of 2
    found = checkpoints(output)
    assert len(found) == 1 and read_meta(found[0])["epoch"] == 1
    check_test_results(output, wsj0_2mix)


def test_finetuning_starts_from_official_weights(wsj0_2mix, tmp_path):
    official = tmp_path / "official"
    reference = make_reference_mossformer(official, seed=0, **TINY_KWARGS)  # encoder.bin, masknet.bin, decoder.bin
    output = tmp_path / "finetune"
    run_recipe(recipe_command("mossformer_small.yaml", wsj0_2mix, output, *TINY, "--pretrained_path", str(official),
                              "--batch_size", "2", "--number_of_epochs", "1"))
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [0, 1]
    assert epochs[1]["lr"] == pytest.approx(1e-4)  # finetune_lr, not lr

    # The loss of the official weights on the validation mixtures, computed here: with our model
    # converted from the same files (exactly), and with the reference model itself.
    model = mossformer_from_official(str(official), **TINY_KWARGS)
    losses, reference_losses = [], []
    with torch.no_grad():
        for row in read_csv(os.path.join(output, "save", "wsj_cv.csv")):
            mixture, _ = sf.read(row["mix_wav"], dtype="float32")
            mixture = torch.from_numpy(mixture)[None]
            sources = np.stack([sf.read(row[f"s{i}_wav"], dtype="float32")[0] for i in (1, 2)], axis=-1)
            sources = torch.from_numpy(sources)[None]
            losses.append(float(get_si_snr_with_pitwrapper(sources, model(mixture))))
            reference_losses.append(float(get_si_snr_with_pitwrapper(sources, reference(mixture))))
    assert epochs[0]["valid"]["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert epochs[0]["valid"]["loss"] == pytest.approx(np.mean(reference_losses), rel=1e-4)


def test_mossformer2_finetunes_from_official_weights_at_16k(tmp_path):
    """hparams/mossformer2.yaml: wav16k data, fine-tuning from a ClearerVoice-Studio folder (the
    reference's state dict in {'model': ...}, module.-prefixed), validation of the official weights
    as epoch 0 equal to the reference's own loss, then training and the test report."""
    data = synthetic_wsj0mix.make_synthetic_wsj0mix(
        str(tmp_path / "2speakers"), num_mixtures={"tr": 4, "cv": 2, "tt": 1}, sample_rates=(16000,), seed=5,
    )
    reference = make_reference_mossformer2(dim=16, num_blocks=1, seed=0)
    official = tmp_path / "MossFormer2_SS_16K"
    official.mkdir()
    (official / "last_best_checkpoint").write_text("model.ckpt-12-345.pt\n")
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 12},
               official / "model.ckpt-12-345.pt")
    output = tmp_path / "finetune"
    run_recipe(recipe_command("mossformer2.yaml", data, output, *TINY_MOSSFORMER2, "--pretrained_path", str(official),
                              "--batch_size", "2", "--number_of_epochs", "1"))
    epochs = history(output)
    assert [entry["epoch"] for entry in epochs] == [0, 1]
    assert epochs[1]["lr"] == pytest.approx(1e-5)  # finetune_lr
    losses = []
    with torch.no_grad():
        for row in read_csv(os.path.join(output, "save", "wsj_cv.csv")):
            assert "/wav16k/" in row["mix_wav"]
            mixture = torch.from_numpy(sf.read(row["mix_wav"], dtype="float32")[0])[None]
            sources = np.stack([sf.read(row[f"s{i}_wav"], dtype="float32")[0] for i in (1, 2)], axis=-1)
            estimate = torch.stack(reference(mixture), dim=-1)
            losses.append(float(get_si_snr_with_pitwrapper(torch.from_numpy(sources)[None], estimate)))
    assert epochs[0]["valid"]["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    check_test_results(output, data, split_folder="wav16k/min/tt")
    exported = os.path.join(output, "model", "hyperparams.yaml")  # the recipe's exported model
    assert os.path.exists(exported) and "MossFormer2MaskNet" in open(exported, encoding="utf-8").read()


def test_not_a_wsj0mix_folder_is_one_clear_error(wsj0_2mix, tmp_path):
    not_wsj = tmp_path / "my_recordings"
    (not_wsj / "wavs").mkdir(parents=True)
    with pytest.raises(MixLayoutError, match=r"is not a wsj0-2mix folder: expected wav8k/min/\{tr,cv,tt\}/\{mix,s1,s2\}"):
        prepare_data.prepare_wsjmix(str(not_wsj), str(tmp_path / "save"))
    # The 16 kHz part is absent: the error says what is there.
    with pytest.raises(MixLayoutError, match="it has wav8k/min"):
        prepare_data.prepare_wsjmix(wsj0_2mix, str(tmp_path / "save"), sample_rate=16000)
    with pytest.raises(MixLayoutError, match=r"\{mix,s1,s2,s3\}"):
        prepare_data.prepare_wsjmix(wsj0_2mix, str(tmp_path / "save"), num_spks=3)
    incomplete = str(tmp_path / "incomplete")
    shutil.copytree(wsj0_2mix, incomplete)
    os.remove(glob.glob(os.path.join(incomplete, "wav8k", "min", "cv", "s2", "*.wav"))[0])
    with pytest.raises(MixLayoutError, match=r"1 of 2 mixtures in .*cv/mix have no file of the same name in cv/s2/"):
        prepare_data.prepare_wsjmix(incomplete, str(tmp_path / "save"))

    result = subprocess.run(recipe_command("mossformer_small.yaml", str(not_wsj), tmp_path / "out", *TINY),
                            cwd=RECIPE, env=recipe_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {not_wsj} is not a wsj0-2mix folder")


def test_manifests_are_idempotent_and_follow_the_data(wsj0_2mix, tmp_path):
    data = str(tmp_path / "2speakers")
    shutil.copytree(wsj0_2mix, data)
    save = str(tmp_path / "save")
    manifests = prepare_data.prepare_wsjmix(data, save)
    assert sorted(manifests) == ["test", "train", "valid"]
    assert [os.path.basename(manifests[k]) for k in ("train", "valid", "test")] == ["wsj_tr.csv", "wsj_cv.csv",
                                                                                     "wsj_tt.csv"]
    rows = read_csv(manifests["test"])
    for row in rows:
        assert os.path.basename(row["s1_wav"]) == os.path.basename(row["mix_wav"]) == f"{row['ID']}.wav"
        assert float(row["duration"]) == pytest.approx(sf.info(row["mix_wav"]).duration, abs=1e-3)
    modified = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(save, "*"))}
    time.sleep(0.05)
    assert prepare_data.prepare_wsjmix(data, save) == manifests  # nothing rewritten
    assert {path: os.path.getmtime(path) for path in glob.glob(os.path.join(save, "*"))} == modified

    # A new mixture: prepared again.
    for folder in ("mix", "s1", "s2"):
        source = glob.glob(os.path.join(data, "wav8k", "min", "tr", folder, "*.wav"))[0]
        shutil.copy(source, os.path.join(os.path.dirname(source), "999c0201_0.5_998c0201_-0.5.wav"))
    prepare_data.prepare_wsjmix(data, save)
    assert len(read_csv(manifests["train"])) == NUM_TRAIN + 1


def test_speakers_from_wsj0_names_and_dynamic_mixing(wsj0_2mix):
    rows = read_csv(prepare_data.prepare_wsjmix(wsj0_2mix, os.path.join(wsj0_2mix, "..", "save_dm"))["train"])
    pool = SpeakerPool.from_rows(rows, num_spks=2)
    assert len(pool.speakers) == 6 and all(len(s) == 3 for s in pool.speakers)
    # Every utterance once (several mixtures may use it), under the speaker its name gives it.
    utterances = {utt for row in rows for _, utt in wsj0_utterances(row["mix_wav"], 2)}
    assert sum(len(paths) for paths in pool.utterances.values()) == len(utterances)
    for speaker, paths in pool.utterances.items():
        for path in paths:
            slot = int(os.path.basename(os.path.dirname(path))[1:]) - 1  # .../s2/<name>.wav -> 1
            assert wsj0_utterances(path, 2)[slot][0] == speaker
    torch.manual_seed(0)
    for _ in range(20):
        paths = pool.draw(2)
        speakers = [next(s for s in pool.speakers if p in pool.utterances[s]) for p in paths]
        assert speakers[0] != speakers[1]

    mixer = SpeakerMixer(2, 8000, segment_samples=4000, speaker_pool=pool, relative_gain_db=2.5)
    for _ in range(5):
        mixture, sources = mixer.dynamic()
        assert sources.shape[0] == 2 and mixture.shape[-1] == sources.shape[-1] <= 4000
        torch.testing.assert_close(mixture, sources.sum(0))
        assert max(float(mixture.abs().max()), float(sources.abs().max())) == pytest.approx(0.9, abs=1e-5)
        levels = 10 * torch.log10(sources.pow(2).mean(-1))
        assert abs(float(levels[0] - levels[1])) <= 5.0 + 1e-3  # gains within +/-2.5 dB each


def test_speed_perturbation_changes_the_sources_and_remixes(wsj0_2mix):
    from speechbrain.augment.time_domain import SpeedPerturb

    row = read_csv(prepare_data.prepare_wsjmix(wsj0_2mix, os.path.join(wsj0_2mix, "..", "save_sp"))["train"])[0]
    original = sf.read(row["s1_wav"], dtype="float32")[0]
    mixer = SpeakerMixer(2, 8000, speed_perturb=SpeedPerturb(8000, speeds=[90]))
    mixture, sources = mixer.from_row(row, training=True)
    assert sources.shape[-1] == pytest.approx(len(original) / 0.9, abs=2)  # 10 % slower, all of it kept
    torch.testing.assert_close(mixture, sources.sum(0))
    # Evaluation items are the files as they are.
    mixture, sources = mixer.from_row(row, training=False)
    np.testing.assert_allclose(sources[0].numpy(), original)
    np.testing.assert_allclose(mixture.numpy(), sf.read(row["mix_wav"], dtype="float32")[0])


def tiny_brain(**hparams):
    modules = MossFormer(**TINY_KWARGS)
    hparams = {"num_spks": 2, "threshold_byloss": True, "threshold": -30.0, "loss_upper_lim": 999999, **hparams}
    return SeparationBrain(
        modules={"encoder": modules.encoder, "masknet": modules.masknet, "decoder": modules.decoder},
        opt_class=lambda params: torch.optim.Adam(params, lr=1e-3),
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
    )


def make_batch(mixture, sources):
    items = [{"id": f"item{i}", "mix_sig": mixture[i], "s1_sig": sources[i, 0], "s2_sig": sources[i, 1]}
             for i in range(len(mixture))]
    return PaddedBatch(items)


def test_training_step_thresholds_and_skips_unusable_losses():
    brain = tiny_brain()
    assert float(brain.training_loss(torch.tensor([-40.0, -10.0, -20.0]))) == pytest.approx(-15.0)  # -40: dropped
    assert brain.training_loss(torch.tensor([-45.0, -31.0])) is None  # every item above 30 dB already
    assert brain.training_loss(torch.tensor([float("nan"), -10.0])) is None
    assert brain.training_loss(torch.tensor([float("inf")])) is None
    assert tiny_brain(threshold_byloss=False).training_loss(torch.tensor([-40.0, -10.0])) == pytest.approx(-25.0)
    assert tiny_brain(loss_upper_lim=5.0).training_loss(torch.tensor([10.0])) is None

    brain.init_optimizers()
    brain.nonfinite_count = 0
    sources = torch.randn(2, 2, 2000)
    before = {name: p.detach().clone() for name, p in brain.modules.named_parameters()}
    bad = make_batch(torch.full((2, 2000), float("nan")), sources)
    assert math.isnan(float(brain.fit_batch(bad)))
    assert brain.nonfinite_count == 1
    assert all(torch.equal(p, before[name]) for name, p in brain.modules.named_parameters())  # no update
    loss = brain.fit_batch(make_batch(sources.sum(1), sources))
    assert math.isfinite(float(loss)) and brain.nonfinite_count == 1
    assert any(not torch.equal(p, before[name]) for name, p in brain.modules.named_parameters())


def test_loss_ignores_the_padding_of_shorter_items():
    brain = tiny_brain()
    sources = torch.randn(2, 2, 1600)
    items = [{"id": "long", "mix_sig": sources[0].sum(0), "s1_sig": sources[0, 0], "s2_sig": sources[0, 1]},
             {"id": "short", "mix_sig": sources[1, :, :1000].sum(0), "s1_sig": sources[1, 0, :1000],
              "s2_sig": sources[1, 1, :1000]}]
    batch = PaddedBatch(items)
    estimates = torch.randn(2, 1600, 2)
    losses = brain.compute_objectives(estimates, batch, sb.Stage.TRAIN)
    alone = get_si_snr_with_pitwrapper(sources[1:, :, :1000].transpose(1, 2), estimates[1:, :1000])
    assert float(losses[1]) == pytest.approx(float(alone), rel=1e-5)


@pytest.mark.parametrize("module", [synthetic_wsj0mix], ids=lambda module: module.__name__)
def test_recipe_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
