"""The WHAM! separation recipe (recipes/WHAM/separation) end to end, both ways of getting noisy
mixtures: the generated WHAM! layout, and WHAM! noise added on the fly to wsj0-2mix.

The data is generated: a miniature wsj0-2mix (``recipes/WSJ0Mix/separation/synthetic_wsj0mix.py``)
and, from it, a miniature WHAM! noise corpus and WHAM! layout (``synthetic_wham.py``), all in
the real layouts. ``train.py`` runs for real in subprocesses with a tiny MossFormer; the
multi-process (torchrun) run is covered by ``test_wsj0mix_recipe.py`` (same training code).
"""

import csv
import doctest
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.training.mixing import MixLayoutError, SpeakerMixer

from test_wsj0mix_recipe import (
    PYTHON,
    ROOT,
    TINY,
    check_test_results,
    history,
    load_recipe_module,
    read_csv,
    run_recipe,
)

RECIPE = os.path.join(ROOT, "recipes", "WHAM", "separation")
prepare_data = load_recipe_module("prepare_data", RECIPE, prefix="wham")
synthetic_wham = load_recipe_module("synthetic_wham", RECIPE, prefix="wham")
synthetic_wsj0mix = load_recipe_module("synthetic_wsj0mix")
NUM_TRAIN = 6


@pytest.fixture(scope="module")
def wham_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    wsj0mix = synthetic_wsj0mix.make_synthetic_wsj0mix(
        str(root / "wsj0-mix" / "2speakers"), num_mixtures={"tr": NUM_TRAIN, "cv": 2, "tt": 2}, seed=1
    )
    noise = synthetic_wham.make_synthetic_wham_noise(str(root / "wham_noise"), wsj0mix, seed=1)
    wham = synthetic_wham.make_synthetic_wham(str(root / "wham"), wsj0mix, noise)
    return {"wsj0mix": wsj0mix, "wham_noise": noise, "wham": wham}


def recipe_command(data_folder, output_folder, *overrides):
    return [PYTHON, "train.py", "hparams/mossformer_small.yaml", "--data_folder", data_folder,
            "--output_folder", str(output_folder), *TINY, "--batch_size", "2", "--number_of_epochs", "1", *overrides]


def metadata(wham_noise, split):
    with open(os.path.join(wham_noise, "metadata", f"mix_param_meta_{split}.csv"), newline="", encoding="utf-8") as s:
        return {row["utterance_id"]: row for row in csv.DictReader(s)}


def test_generated_wham_layout_trains_and_evaluates(wham_data, tmp_path):
    output = tmp_path / "run"
    run_recipe(recipe_command(wham_data["wham"], output, "--use_speedperturb", "True"), cwd=RECIPE)
    assert [entry["epoch"] for entry in history(output)] == [1]
    assert history(output)[0]["steps"] == NUM_TRAIN // 2
    rows = read_csv(os.path.join(output, "save", "wham_tt.csv"))
    assert list(rows[0]) == ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    assert all("/tt/mix_both/" in row["mix_wav"] and "/tt/noise/" in row["noise_wav"] for row in rows)
    # The test mixtures are the noisy ones (mix_both); the references the clean sources.
    for row in rows:
        saved, _ = sf.read(os.path.join(output, "separated", "mix", f"{row['ID']}.wav"))
        np.testing.assert_allclose(saved, sf.read(row["mix_wav"])[0], atol=1e-6)
    check_test_results(output, wham_data["wham"], mixture_folder="mix_both")


def test_mossformer2_trains_on_the_16k_wham_layout(tmp_path):
    """hparams/mossformer2.yaml (16 kHz, tiny sizes): the generated WHAM! wav16k layout trains,
    and the noisy test mixtures are separated and scored against the clean sources."""
    from test_wsj0mix_recipe import TINY_MOSSFORMER2

    wsj0mix = synthetic_wsj0mix.make_synthetic_wsj0mix(
        str(tmp_path / "wsj0-mix" / "2speakers"), num_mixtures={"tr": 4, "cv": 1, "tt": 2}, sample_rates=(16000,), seed=2
    )
    noise = synthetic_wham.make_synthetic_wham_noise(str(tmp_path / "wham_noise"), wsj0mix, seed=2)
    wham = synthetic_wham.make_synthetic_wham(str(tmp_path / "wham"), wsj0mix, noise, sample_rates=(16000,))
    output = tmp_path / "run"
    command = [PYTHON, "train.py", "hparams/mossformer2.yaml", "--data_folder", wham, "--output_folder", str(output),
               *TINY_MOSSFORMER2, "--batch_size", "2", "--number_of_epochs", "1"]
    run_recipe(command, cwd=RECIPE)
    assert [entry["epoch"] for entry in history(output)] == [1]
    assert all("/wav16k/min/tt/mix_both/" in row["mix_wav"] for row in read_csv(os.path.join(output, "save", "wham_tt.csv")))
    check_test_results(output, wham, split_folder="wav16k/min/tt", mixture_folder="mix_both")


def test_wham_noise_on_the_fly_with_dynamic_mixing(wham_data, tmp_path):
    output = tmp_path / "run"
    run_recipe(recipe_command(wham_data["wsj0mix"], output, "--wham_noise_folder", wham_data["wham_noise"],
                              "--dynamic_mixing", "True"), cwd=RECIPE)
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as stream:
        assert re.search(r"Dynamic mixing from \d+ speakers", stream.read())
    assert [entry["epoch"] for entry in history(output)] == [1]

    # Every mixture gets the noise of the same name, with the metadata's start and SNR.
    rows = read_csv(os.path.join(output, "save", "wham_tt.csv"))
    meta = metadata(wham_data["wham_noise"], "tt")
    mixer = SpeakerMixer(2, 8000)
    for row in rows:
        name = os.path.basename(row["mix_wav"])
        assert os.path.basename(row["noise_wav"]) == name and "/wham_noise/tt/" in row["noise_wav"]
        assert int(row["noise_start"]) == int(meta[name]["noise_samples_beginning_16k"])
        assert float(row["noise_snr_db"]) == pytest.approx(float(meta[name]["target_speaker1_snr_db"]), abs=1e-4)
        mixture, sources = mixer.from_row(row)
        noise = mixture - sources.sum(0)
        snr = 10 * torch.log10(sources[0].pow(2).mean() / noise.pow(2).mean())
        assert float(snr) == pytest.approx(float(row["noise_snr_db"]), abs=0.01)
        saved, _ = sf.read(os.path.join(output, "separated", "mix", f"{row['ID']}.wav"), dtype="float32")
        np.testing.assert_allclose(saved, mixture.numpy(), atol=1e-6)  # what the recipe separated
        # The references are the (possibly scaled) clean sources: SI-SNR does not mind the scale.
        clean, _ = sf.read(row["s1_wav"], dtype="float32")
        assert float(np.corrcoef(clean, sources[0].numpy())[0, 1]) > 0.9999
    check_test_results(output, wham_data["wsj0mix"])


def test_noise_without_metadata_or_pairing_is_drawn_with_the_seed(wham_data, tmp_path):
    noise = str(tmp_path / "wham_noise")
    shutil.copytree(wham_data["wham_noise"], noise)
    shutil.rmtree(os.path.join(noise, "metadata"))
    for split in ("tr", "cv", "tt"):  # unrelated names: no pairing by name either
        for index, name in enumerate(sorted(os.listdir(os.path.join(noise, split)))):
            os.rename(os.path.join(noise, split, name), os.path.join(noise, split, f"noise_{index}.wav"))
    options = dict(data_folder=wham_data["wsj0mix"], wham_noise_folder=noise, snr_range_db=(-2.0, 1.0), seed=7)
    first = prepare_data.prepare_wham(save_folder=str(tmp_path / "a"), **options)
    second = prepare_data.prepare_wham(save_folder=str(tmp_path / "b"), **options)
    rows = read_csv(first["valid"])
    assert rows == read_csv(second["valid"])  # the seed fixes the draws
    for row in rows:
        assert os.path.basename(row["noise_wav"]).startswith("noise_")
        assert -2.0 <= float(row["noise_snr_db"]) <= 1.0
        assert 0 <= int(row["noise_start"]) < sf.info(row["noise_wav"]).frames


def test_wrong_folders_are_one_clear_error(wham_data, tmp_path):
    # The wsj0-2mix folder without --wham_noise_folder: not a generated WHAM! folder.
    with pytest.raises(MixLayoutError, match=r"is not a WHAM! folder: expected wav8k/min/\{tr,cv,tt\}/"
                                             r"\{mix_both,s1,s2,noise\}/\*.wav.*--wham_noise_folder"):
        prepare_data.prepare_wham(wham_data["wsj0mix"], str(tmp_path / "save"))
    empty = tmp_path / "not_noise"
    empty.mkdir()
    with pytest.raises(MixLayoutError, match="is not a WHAM! noise folder: expected {tr,cv,tt}/\\*.wav"):
        prepare_data.prepare_wham(wham_data["wsj0mix"], str(tmp_path / "save"), wham_noise_folder=str(empty))


@pytest.mark.parametrize("module", [synthetic_wham], ids=lambda module: module.__name__)
def test_recipe_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
