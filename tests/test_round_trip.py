"""Round trips through the original tools: folders written by ``speechbrain-ext convert`` load
in ModelScope's own ``pipeline(...)`` and ClearVoice's own loader and give our output, and
official folders of any size load in our interfaces.

The models are random (seeded) and the audio is generated: nothing is downloaded.
"""

import argparse
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext import cli
from speechbrain_ext.convert import frcrn_to_official, modelscope_configuration, mossformer2_to_official
from speechbrain_ext.inference import EnhanceFRCRN, SeparateMossFormer
from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.lobes.models.mossformer import MossFormer
from speechbrain_ext.lobes.models.mossformer2 import MossFormer2
from speechbrain_ext.model_folders import ModelFolderError, write_model_folder

from conftest import OFFICIAL_FRCRN_KWARGS, OFFICIAL_MOSSFORMER_KWARGS, make_reference_mossformer, mossformer2_kwargs, randomize_

SMALL_MOSSFORMER = dict(in_channels=32, out_channels=32, num_blocks=1, d_model=32, group_size=16, query_key_dim=16)


def convert(task, source, output, layout):
    """``speechbrain-ext convert`` in-process; returns (exit code, stderr-like message)."""
    try:
        return cli.main(["convert", task, "--model", str(source), "-o", str(output), "--to", layout]), ""
    except SystemExit as exit_:
        return 1, str(exit_.code)


@pytest.fixture(scope="module")
def official_size_frcrn(tmp_path_factory):
    """A SpeechBrain-format folder holding an official-size FRCRN with random weights."""
    torch.manual_seed(0)
    model = randomize_(FRCRN(), 1).eval()
    folder = tmp_path_factory.mktemp("frcrn") / "speechbrain"
    write_model_folder(EnhanceFRCRN(modules={"model": model}, hparams={"sample_rate": 16000}), folder)
    return folder, model


@pytest.fixture(scope="module")
def small_mossformer(tmp_path_factory):
    """A SpeechBrain-format folder holding a small 3-speaker MossFormer with random weights."""
    torch.manual_seed(0)
    model = randomize_(MossFormer(num_spks=3, **SMALL_MOSSFORMER), 2).eval()
    separator = SeparateMossFormer(modules={"encoder": model.encoder, "masknet": model.masknet,
                                            "decoder": model.decoder}, hparams={"sample_rate": 8000, "num_spks": 3})
    folder = tmp_path_factory.mktemp("mossformer") / "speechbrain"
    write_model_folder(separator, folder)
    return folder, separator


def modelscope_norm(x):
    """The level normalisation of ModelScope's ANS pipeline (two passes to -25 dB), for the oracle."""
    x = x * 10 ** (-25 / 20) / np.sqrt(np.mean(x**2))
    power = x**2
    return x * 10 ** (-25 / 20) / np.sqrt(power[power > power.mean()].mean())


def test_frcrn_modelscope_folder_runs_in_modelscope_pipeline(official_size_frcrn, tmp_path):
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    source, model = official_size_frcrn
    folder = tmp_path / "modelscope"
    assert convert("enhancement", source, folder, "modelscope") == (0, "")
    assert sorted(os.listdir(folder)) == ["README.md", "configuration.json", "pytorch_model.bin"]

    # 16000 + 2 * 12000 samples, a whole number of frames: the pipeline neither pads nor cuts.
    noisy = 0.1 * np.random.default_rng(0).standard_normal(40000)
    sf.write(tmp_path / "noisy.wav", noisy, 16000, subtype="FLOAT")
    ans = pipeline(Tasks.acoustic_noise_suppression, model=str(folder))
    theirs = np.frombuffer(ans(str(tmp_path / "noisy.wav"))[OutputKeys.OUTPUT_PCM], dtype=np.int16)

    # Ours on the input the pipeline gives its model; then its int16 conversion (which wraps
    # rather than clips: these random weights output peaks above 1).
    enhancer = EnhanceFRCRN.from_hparams(source=str(folder))
    enhancer.hparams.normalize = False
    normalised = torch.from_numpy(modelscope_norm(sf.read(tmp_path / "noisy.wav")[0]).astype(np.float32))
    ours = (enhancer.enhance_batch(normalised).numpy() * 32768).astype(np.int16)
    assert theirs.shape == ours.shape == (40000,)
    assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1


def test_frcrn_clearervoice_folder_loads_every_tensor_in_clearvoice(official_size_frcrn, tmp_path):
    from clearvoice.networks import CLS_FRCRN_SE_16K

    source, model = official_size_frcrn
    folder = tmp_path / "clearervoice"
    assert convert("enhancement", source, folder, "clearervoice") == (0, "")
    assert (folder / "last_best_checkpoint").read_text().strip() == "model.pt"
    # ClearVoice's own arguments for FRCRN_SE_16K (its config/inference/FRCRN_SE_16K.yaml).
    args = argparse.Namespace(checkpoint_dir=str(folder), network="FRCRN_SE_16K", mode="inference", use_cuda=0,
                              sampling_rate=16000, win_type="hanning", win_len=640, win_inc=320, fft_len=640)
    theirs = CLS_FRCRN_SE_16K(args).model
    exported = frcrn_to_official(model)
    state = theirs.state_dict()
    assert state.keys() == exported.keys()
    assert all(torch.equal(state[name], exported[name]) for name in state)
    noisy = 0.05 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        error = (theirs(noisy)[1] - model(noisy)).pow(2).sum() / model(noisy).pow(2).sum()
    assert -10 * torch.log10(error) > 100  # dB


def test_mossformer_modelscope_folder_runs_in_modelscope_pipeline(small_mossformer, tmp_path):
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    source, separator = small_mossformer
    folder = tmp_path / "modelscope"
    assert convert("separation", source, folder, "modelscope") == (0, "")
    mixture = (0.1 * np.random.default_rng(2).standard_normal(8000)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mixture, 8000, subtype="FLOAT")
    separate = pipeline(Tasks.speech_separation, model=str(folder))
    theirs = [np.frombuffer(pcm, dtype=np.int16) for pcm in separate(str(tmp_path / "mix.wav"))[OutputKeys.OUTPUT_PCM_LIST]]
    assert len(theirs) == 3  # num_spks taken from the folder

    estimates = separator.separate_batch(torch.from_numpy(mixture)[None])[0].numpy()
    for speaker, pcm in enumerate(theirs):
        peak_normalised = estimates[:, speaker] / np.abs(estimates[:, speaker]).max() * 0.5  # as the pipeline
        assert np.abs(pcm - peak_normalised * 32768).max() <= 1.01

    # And back: our interface reads the sizes, speaker count and rate from configuration.json.
    back = SeparateMossFormer.from_hparams(source=str(folder))
    assert (back.hparams.num_spks, back.sample_rate) == (3, 8000)
    assert torch.allclose(back.separate_batch(torch.from_numpy(mixture)[None])[0], torch.from_numpy(estimates),
                          atol=1e-6)


def test_official_folders_of_other_sizes_load_with_their_configuration(tmp_path):
    from modelscope.models.audio.ans.frcrn import FRCRN as ReferenceFRCRN

    folder = tmp_path / "mossformer"
    reference = make_reference_mossformer(folder, seed=3, **SMALL_MOSSFORMER)
    kwargs = {**OFFICIAL_MOSSFORMER_KWARGS, **SMALL_MOSSFORMER}
    (folder / "configuration.json").write_text(json.dumps(modelscope_configuration("separation", kwargs)))
    separator = SeparateMossFormer.from_hparams(source=str(folder))
    mixture = 0.1 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(mixture)
    assert (separator.separate_batch(mixture) - expected).abs().max() < 1e-5

    # FRCRN: a hop other than the official one.
    folder = tmp_path / "frcrn"
    folder.mkdir()
    kwargs = {**OFFICIAL_FRCRN_KWARGS, "win_inc": 160}
    torch.manual_seed(5)
    reference = randomize_(ReferenceFRCRN(**kwargs), 5).eval()
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    (folder / "configuration.json").write_text(json.dumps(modelscope_configuration("enhancement", kwargs)))
    enhancer = EnhanceFRCRN.from_hparams(source=str(folder))
    assert enhancer.mods.model.config["win_inc"] == 160
    enhancer.hparams.normalize = False
    noisy = 0.1 * torch.randn(1, 16000 - 480, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = reference(noisy)[4]  # the second stage: the model's output
    assert (enhancer.enhance_batch(noisy) - expected).abs().max() < 1e-4


def test_layouts_a_tool_cannot_load_are_refused_and_nothing_is_left(models, small_mossformer, tmp_path):
    source, _ = small_mossformer
    code, message = convert("separation", source, tmp_path / "cv", "clearervoice")
    assert code == 1 and "ClearerVoice-Studio has no MossFormer" in message
    code, message = convert("enhancement", models["enhance"], tmp_path / "ms", "modelscope")
    assert code == 1 and "builds only the official model" in message and "'channels': 8" in message
    assert os.listdir(tmp_path) == []  # neither the folder nor a staging folder

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code, message = convert("enhancement", models["enhance"], taken, "speechbrain")
    assert code == 1 and "is not empty" in message
    assert os.listdir(taken) == ["notes.txt"]


def test_speechbrain_folder_round_trip_keeps_the_model(models, small_mossformer, tmp_path):
    """--to speechbrain from a SpeechBrain folder (e.g. a recipe's exported model) writes the model's
    own sizes, not the card's defaults."""
    source, separator = small_mossformer
    assert convert("separation", source, tmp_path / "again", "speechbrain") == (0, "")
    again = SeparateMossFormer.from_hparams(source=str(tmp_path / "again"), savedir=str(tmp_path / "again"))
    mixture = 0.1 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.separate_batch(mixture), separator.separate_batch(mixture))

    assert convert("enhancement", models["enhance"], tmp_path / "small", "speechbrain") == (0, "")
    small = EnhanceFRCRN.from_hparams(source=str(tmp_path / "small"), savedir=str(tmp_path / "small"))
    assert small.mods.model.config["channels"] == 8


def test_replace_own_replaces_only_a_folder_we_wrote(models, tmp_path):
    enhancer = EnhanceFRCRN.from_hparams(source=str(models["enhance"]), savedir=str(tmp_path / "s"))
    folder = tmp_path / "model"
    write_model_folder(enhancer, folder)
    write_model_folder(enhancer, folder, replace_own=True)
    assert sorted(os.listdir(tmp_path)) == ["model", "s"]
    (tmp_path / "s" / "README.md").write_text("# someone else's\n")
    with pytest.raises(ModelFolderError, match="is not empty"):
        write_model_folder(enhancer, tmp_path / "s", replace_own=True)


def _separator(model, sample_rate=16000):
    return SeparateMossFormer(modules={"encoder": model.encoder, "masknet": model.masknet, "decoder": model.decoder},
                              hparams={"sample_rate": sample_rate, "num_spks": model.num_spks})


def test_mossformer2_clearervoice_folder_loads_every_tensor_in_clearvoice(tmp_path):
    from clearvoice.networks import CLS_MossFormer2_SS_16K

    torch.manual_seed(0)
    model = randomize_(MossFormer2(), 3).eval()
    write_model_folder(_separator(model), tmp_path / "speechbrain")
    folder = tmp_path / "clearervoice"
    assert convert("separation", tmp_path / "speechbrain", folder, "clearervoice") == (0, "")
    assert (folder / "last_best_checkpoint").read_text().strip() == "model.pt"
    # ClearVoice's own arguments for MossFormer2_SS_16K (its config/inference/MossFormer2_SS_16K.yaml).
    args = argparse.Namespace(checkpoint_dir=str(folder), network="MossFormer2_SS_16K", mode="inference", use_cuda=0,
                              sampling_rate=16000, num_spks=2, encoder_kernel_size=16, encoder_embedding_dim=512,
                              mossformer_sequence_dim=512, num_mossformer_layer=24)
    theirs = CLS_MossFormer2_SS_16K(args).model
    exported = mossformer2_to_official(model)
    state = theirs.state_dict()
    assert state.keys() == exported.keys()
    assert all(torch.equal(state[name], exported[name]) for name in state)
    mix = 0.1 * torch.randn(1, 4003, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(mix)
        error = (torch.stack(theirs(mix), -1) - ours).pow(2).sum() / ours.pow(2).sum()
    assert -10 * torch.log10(error) > 100  # dB


def test_mossformer2_layouts_and_speechbrain_round_trip(tmp_path):
    torch.manual_seed(0)
    small = randomize_(MossFormer2(**mossformer2_kwargs(32, 1), group_size=16, query_key_dim=16, fsmn_channels=16), 4)
    separator = _separator(small.eval())
    separator.hparams.chunk_seconds = 0.5  # as a card sets it (MossFormer2's: 15 s)
    write_model_folder(separator, tmp_path / "sb")
    code, message = convert("separation", tmp_path / "sb", tmp_path / "ms", "modelscope")
    assert code == 1 and "ModelScope has no MossFormer2" in message
    code, message = convert("separation", tmp_path / "sb", tmp_path / "cv", "clearervoice")
    assert code == 1 and "builds only the official MossFormer2" in message and "'in_channels': 32" in message
    assert not (tmp_path / "ms").exists() and not (tmp_path / "cv").exists()

    assert "MossFormer2MaskNet" in (tmp_path / "sb" / "hyperparams.yaml").read_text()
    again = SeparateMossFormer.from_hparams(source=str(tmp_path / "sb"), savedir=str(tmp_path / "sb"))
    assert again.mods.masknet.recurrences[0].input_proj.out_features == 16
    mixture = 0.1 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.separate_batch(mixture), separator.separate_batch(mixture))

    # The card's chunk length is the default of separate_file ("auto").
    assert again.hparams.chunk_seconds == 0.5
    import soundfile

    soundfile.write(tmp_path / "mix.wav", 0.1 * np.random.default_rng(0).standard_normal(32000), 16000)
    auto = again.separate_file(str(tmp_path / "mix.wav"))
    assert torch.equal(auto, again.separate_file(str(tmp_path / "mix.wav"), chunk_seconds=0.5))
    assert not torch.equal(auto, again.separate_file(str(tmp_path / "mix.wav"), chunk_seconds=None))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
