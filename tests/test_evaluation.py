"""speechbrain_ext.evaluation: metrics against their reference packages, files, CSVs, plot, CLI."""

import argparse
import csv
import math
import os

import numpy as np
import pesq
import pystoi
import pytest
import soundfile as sf

from speechbrain_ext import evaluation
from speechbrain_ext.cli import add_evaluate_arguments, run_evaluate
from speechbrain_ext.evaluation import EvaluationError, compute_metrics, evaluate_folders, match_files, si_snr
from speechbrain_ext.synthetic import mix_at_snr, pink_noise, speech_like, white_noise


def noisy_pair(seconds=2.0, rate=16000, snr=5.0, seed=0):
    clean = speech_like(seconds, rate, seed=seed)
    noisy, _ = mix_at_snr(clean, pink_noise(seconds, rate, seed=seed + 100), snr)
    return clean.astype(np.float64), noisy.astype(np.float64)


def test_pesq_and_stoi_agree_with_the_packages():
    clean, noisy = noisy_pair()
    assert evaluation.pesq_wb(clean, noisy, 16000) == pytest.approx(pesq.pesq(16000, clean, noisy, "wb"), abs=1e-6)
    assert evaluation.pesq_nb(clean, noisy, 16000) == pytest.approx(pesq.pesq(16000, clean, noisy, "nb"), abs=1e-6)
    assert evaluation.stoi(clean, noisy, 16000) == pytest.approx(pystoi.stoi(clean, noisy, 16000), abs=1e-9)

    clean8, noisy8 = noisy_pair(rate=8000)
    assert evaluation.pesq_nb(clean8, noisy8, 8000) == pytest.approx(pesq.pesq(8000, clean8, noisy8, "nb"), abs=1e-6)
    assert math.isnan(evaluation.pesq_wb(clean8, noisy8, 8000))  # no wideband content at 8 kHz


def test_pesq_of_silence_is_nan_with_a_warning():
    with pytest.warns(UserWarning, match="PESQ"):
        assert math.isnan(evaluation.pesq_wb(np.zeros(16000), np.zeros(16000), 16000))


def test_si_snr_by_hand():
    target = np.array([1.0, -1.0, 1.0, -1.0])
    orthogonal = np.array([1.0, 1.0, -1.0, -1.0])  # zero-mean and orthogonal to the target
    # Projection 2 * target (energy 16), residual the orthogonal part (energy 4): 10 log10(4).
    assert si_snr(2 * target + orthogonal, target) == pytest.approx(10 * np.log10(16 / 4), abs=1e-6)
    # Invariant to the scale of the estimate and to constant offsets (zero-mean first).
    assert si_snr(-0.3 * (2 * target + orthogonal) + 5.0, target) == pytest.approx(10 * np.log10(4), abs=1e-6)
    clean, noisy = noisy_pair(snr=5.0)
    assert si_snr(noisy, clean) == pytest.approx(5.0, abs=0.3)  # mixed at 5 dB (SI-SNR close to SNR)


def test_compute_metrics_reports_noisy_and_improvement():
    clean, noisy = noisy_pair(snr=0.0)
    enhanced = clean + 0.1 * (noisy - clean)  # noise 20 dB down
    metrics = compute_metrics(clean, enhanced, 16000, noisy=noisy)
    assert metrics["si_snr_improvement"] == pytest.approx(metrics["si_snr"] - metrics["si_snr_noisy"])
    assert metrics["si_snr_improvement"] == pytest.approx(20.0, abs=0.5)
    assert metrics["pesq_wb"] > metrics["pesq_wb_noisy"] and metrics["stoi"] > metrics["stoi_noisy"]


def write_dns_style_folders(root, count=3, rate=16000, seconds=1.5):
    """clean/clean_fileid_N.wav, noisy/<...>_fileid_N.wav and enhanced/<same as noisy>."""
    folders = {name: os.path.join(root, name) for name in ("clean", "noisy", "enhanced")}
    for folder in folders.values():
        os.makedirs(folder)
    for fileid in range(count):
        clean, noisy = noisy_pair(seconds, rate, snr=float(fileid * 3), seed=fileid)
        enhanced = clean + 0.3 * (noisy - clean)
        name = f"clnsp{fileid}_pink_snr{fileid * 3}_tl-25_fileid_{fileid}.wav"
        sf.write(os.path.join(folders["clean"], f"clean_fileid_{fileid}.wav"), clean, rate, subtype="FLOAT")
        sf.write(os.path.join(folders["noisy"], name), noisy, rate, subtype="FLOAT")
        # Enhancers may drop the last few samples (FRCRN returns whole frames).
        sf.write(os.path.join(folders["enhanced"], name), enhanced[:-100], rate, subtype="FLOAT")
    return folders


def test_evaluate_folders_writes_per_file_rows_averages_and_plot(tmp_path):
    folders = write_dns_style_folders(str(tmp_path))
    csv_path, png_path = str(tmp_path / "out" / "results.csv"), str(tmp_path / "out" / "spectrograms.png")
    result = evaluate_folders(folders["clean"], folders["enhanced"], folders["noisy"], csv_path, png_path)

    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["id"] for row in rows] == ["fileid_0", "fileid_1", "fileid_2", "avg"]
    for row, item in zip(rows, result.rows):
        clean, _ = sf.read(row["clean"])
        enhanced, _ = sf.read(row["enhanced"])
        noisy, _ = sf.read(row["noisy"])
        length = len(enhanced)  # scored on the common part
        assert float(row["si_snr"]) == pytest.approx(si_snr(enhanced, clean[:length]), abs=1e-4)
        assert float(row["si_snr_noisy"]) == pytest.approx(si_snr(noisy[:length], clean[:length]), abs=1e-4)
        assert float(row["pesq_wb"]) == pytest.approx(pesq.pesq(16000, clean[:length], enhanced, "wb"), abs=1e-4)
        assert float(row["stoi"]) == pytest.approx(item["stoi"], abs=1e-4)
    for metric in ("pesq_wb", "pesq_nb", "stoi", "si_snr", "si_snr_improvement"):
        average = np.mean([float(row[metric]) for row in rows[:-1]])
        assert float(rows[-1][metric]) == pytest.approx(average, abs=1e-3)
        assert result.summary["enhanced"][metric] == pytest.approx(average, abs=1e-3)

    with open(evaluation.summary_path_for(csv_path), newline="", encoding="utf-8") as stream:
        summary = {row["system"]: row for row in csv.DictReader(stream)}
    assert list(summary) == ["noisy", "enhanced"]
    assert float(summary["noisy"]["si_snr"]) == pytest.approx(np.mean([float(r["si_snr_noisy"]) for r in rows[:-1]]),
                                                             abs=1e-3)
    assert float(summary["enhanced"]["si_snr"]) > float(summary["noisy"]["si_snr"])

    with open(png_path, "rb") as stream:
        header = stream.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width >= 3 * 300 and height >= 3 * 200  # 3 files x (noisy, enhanced, clean) panels


def run_cli(*argv):
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    return run_evaluate(parser.parse_args(list(argv)))


def test_command_prints_the_table(tmp_path, capsys):
    folders = write_dns_style_folders(str(tmp_path), count=2)
    status = run_cli("--clean", folders["clean"], "--enhanced", folders["enhanced"], "--noisy", folders["noisy"],
                     "--csv", str(tmp_path / "r.csv"))
    output = capsys.readouterr().out
    assert status == 0
    assert "| noisy    |" in output and "| enhanced |" in output and "PESQ-WB" in output
    assert os.path.isfile(tmp_path / "r_summary.csv")
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--clean", "a", "--enhanced", "b"]).task == "enhancement"


def test_matching_by_name(tmp_path):
    for folder in ("ref", "out"):
        os.makedirs(tmp_path / folder)
        for name in ("a.wav", "b.flac"):
            sf.write(str(tmp_path / folder / name), white_noise(0.1, 16000, seed=1), 16000)
    items = match_files(str(tmp_path / "ref"), str(tmp_path / "out"))
    assert [(item.id, os.path.basename(item.enhanced)) for item in items] == [("a", "a.wav"), ("b", "b.flac")]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_enhanced", "1 of 2 clean files have no enhanced file with the same fileid"),
        ("unrelated_names", "have no enhanced file with the same name"),
        ("sample_rate", "at 16000 Hz but the enhanced file .* is at 8000 Hz; resample it"),
        ("length", "differ in length"),
        ("no_folder", "the enhanced folder .* does not exist"),
        ("empty_folder", "has no audio files"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, breakage, message):
    folders = write_dns_style_folders(str(tmp_path), count=2, seconds=0.5)
    enhanced = folders["enhanced"]
    names = sorted(os.listdir(enhanced))
    if breakage == "missing_enhanced":
        os.remove(os.path.join(enhanced, names[0]))
    elif breakage == "unrelated_names":
        for index, name in enumerate(names):
            os.rename(os.path.join(enhanced, name), os.path.join(enhanced, f"take{index}.wav"))
    elif breakage == "sample_rate":
        sf.write(os.path.join(enhanced, names[1]), np.zeros(4000), 8000)
    elif breakage == "length":
        sf.write(os.path.join(enhanced, names[1]), np.zeros(2000), 16000)
    elif breakage == "no_folder":
        enhanced = str(tmp_path / "nowhere")
    elif breakage == "empty_folder":
        for name in names:
            os.remove(os.path.join(enhanced, name))
    with pytest.raises(EvaluationError, match=message):
        evaluate_folders(folders["clean"], enhanced)
    assert run_cli("--clean", folders["clean"], "--enhanced", enhanced) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("evaluate: error: ") and "\n" not in error


def test_resample_option_accepts_other_rates(tmp_path):
    folders = write_dns_style_folders(str(tmp_path), count=1, seconds=1.0)
    name = os.listdir(folders["enhanced"])[0]
    path = os.path.join(folders["enhanced"], name)
    enhanced, rate = sf.read(path)
    sf.write(path, evaluation.resample(enhanced, rate, 48000), 48000, subtype="FLOAT")
    result = evaluate_folders(folders["clean"], folders["enhanced"], resample=True)
    assert result.rows[0]["sample_rate"] == 16000
    assert result.rows[0]["si_snr"] > 5


# --------------------------------------------------------------------------------------------
# Separation
# --------------------------------------------------------------------------------------------


def orthogonal_signals(count=4, length=8000, scale=3.0, seed=0):
    """``count`` zero-mean, mutually orthogonal signals of equal energy (Gram-Schmidt)."""
    raw = np.random.default_rng(seed).standard_normal((count, length))
    raw -= raw.mean(axis=1, keepdims=True)
    basis, _ = np.linalg.qr(raw.T)
    return scale * np.sqrt(length) * basis.T  # rows: orthogonal, zero mean, power scale**2


def test_separation_metrics_on_known_answers():
    s1, s2, n1, n2 = orthogonal_signals()
    sources = np.stack([s1, s2])
    mixture = s1 + s2
    # The mixture's SI-SNR against either (orthogonal, equal-power) source is exactly 0 dB.
    assert si_snr(mixture, s1) == pytest.approx(0.0, abs=1e-9)

    perfect = evaluation.separation_metrics(mixture, sources, sources)
    assert perfect["permutation"] == (0, 1) and perfect["si-snr"] > 60
    assert perfect["si-snr_i"] == pytest.approx(perfect["si-snr"], abs=1e-9)  # minus the 0 dB of the mixture

    # Swapped order: permutation-invariant. Scaled (even negatively): scale-invariant.
    swapped = evaluation.separation_metrics(mixture, sources, sources[::-1])
    assert swapped["permutation"] == (1, 0)
    assert swapped["si-snr"] == pytest.approx(perfect["si-snr"]) and swapped["sdr"] == pytest.approx(perfect["sdr"])
    scaled = evaluation.separation_metrics(mixture, sources, -0.25 * sources)
    assert scaled["permutation"] == (0, 1) and scaled["si-snr"] > 60  # "infinite" up to rounding

    # Noise 20 dB below each source, orthogonal to everything: SI-SNR 20 dB, SI-SNRi 20 dB, by hand;
    # in swapped order and at another scale too.
    estimates = np.stack([s1 + 0.1 * n1, s2 + 0.1 * n2])
    for variant in (estimates, 7.0 * estimates[::-1]):
        metrics = evaluation.separation_metrics(mixture, sources, variant)
        assert metrics["si-snr"] == pytest.approx(20.0, abs=1e-6)
        assert metrics["si-snr_i"] == pytest.approx(20.0, abs=1e-6)

    # SDR is mir_eval's (with its own permutation search here), and SDRi is over the mixture.
    from mir_eval.separation import bss_eval_sources

    with pytest.warns(FutureWarning):  # mir_eval 0.8 deprecates its separation module
        sdr, _, _, permutation = bss_eval_sources(sources, estimates[::-1])
        mixture_sdr, _, _, _ = bss_eval_sources(sources, np.stack([mixture, mixture]))
    assert list(permutation) == [1, 0]
    metrics = evaluation.separation_metrics(mixture, sources, estimates[::-1])
    assert metrics["sdr"] == pytest.approx(np.mean(sdr), abs=1e-6)
    assert metrics["sdr_i"] == pytest.approx(np.mean(sdr) - np.mean(mixture_sdr), abs=1e-6)


def test_separation_needs_matching_shapes_and_warns_on_silence():
    s1, s2, _, _ = orthogonal_signals(length=2000)
    with pytest.raises(ValueError, match="do not match"):
        evaluation.separation_metrics(s1 + s2, np.stack([s1, s2]), np.stack([s1, s2])[:, :1000])
    with pytest.warns(UserWarning, match="SDR could not be computed"):
        metrics = evaluation.separation_metrics(s1 + s2, np.stack([s1, s2]), np.stack([s1, np.zeros_like(s2)]))
    assert math.isnan(metrics["sdr"]) and math.isfinite(metrics["si-snr"])


def write_separation_folders(root, count=3, rate=8000, seconds=1.0):
    """mix/, s1/, s2/ and est1/, est2/ (estimates of mixture N in swapped order when N is odd,
    at another scale, with a little noise)."""
    folders = {name: os.path.join(root, name) for name in ("mix", "s1", "s2", "est1", "est2")}
    for folder in folders.values():
        os.makedirs(folder)
    for index in range(count):
        s1 = speech_like(seconds, rate, seed=2 * index, f0=110.0)
        s2 = speech_like(seconds, rate, seed=2 * index + 1, f0=210.0)
        noise = 0.05 * white_noise(seconds, rate, seed=100 + index)
        estimates = [1.7 * s1 + noise, 1.7 * s2 - noise]
        if index % 2:
            estimates.reverse()
        name = f"mixture_{index}.wav"
        for folder, signal in zip(("mix", "s1", "s2", "est1", "est2"), (s1 + s2, s1, s2, *estimates)):
            sf.write(os.path.join(folders[folder], name), signal, rate, subtype="FLOAT")
    return folders


def test_separation_command_writes_speechbrain_test_results(tmp_path, capsys):
    folders = write_separation_folders(str(tmp_path))
    csv_path = str(tmp_path / "out" / "test_results.csv")
    status = run_cli("--task", "separation", "--mix", folders["mix"], "--sources", folders["s1"], folders["s2"],
                     "--estimates", folders["est1"], folders["est2"], "--csv", csv_path)
    assert status == 0
    output = capsys.readouterr().out
    assert "3 mixtures" in output and "SI-SNRi (dB)" in output and "SDRi (dB)" in output
    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    assert [row["snt_id"] for row in rows] == ["mixture_0", "mixture_1", "mixture_2", "avg"]
    for row in rows[:-1]:
        signals = {name: sf.read(os.path.join(folder, f"{row['snt_id']}.wav"))[0] for name, folder in folders.items()}
        expected = evaluation.separation_metrics(
            signals["mix"], np.stack([signals["s1"], signals["s2"]]), np.stack([signals["est1"], signals["est2"]])
        )
        for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
            assert float(row[key]) == pytest.approx(expected[key], abs=1e-4)
        assert float(row["si-snr"]) > 15  # the swapped files were matched
    for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
        assert float(rows[-1][key]) == pytest.approx(np.mean([float(r[key]) for r in rows[:-1]]), abs=1e-3)


@pytest.mark.parametrize(
    "arguments, message, status",
    [
        (["--task", "separation", "--sources", "a", "b", "--estimates", "c", "d"], "needs --mix", 2),
        (["--task", "separation", "--mix", "m"], "needs --sources, --estimates", 2),
        (["--task", "separation", "--mix", "m", "--sources", "a", "b", "--estimates", "c", "d", "--clean", "x"],
         "--clean are options of --task enhancement", 2),
        (["--enhanced", "x"], "--task enhancement needs --clean", 2),
    ],
)
def test_separation_command_option_errors(capsys, arguments, message, status):
    assert run_cli(*arguments) == status
    error = capsys.readouterr().err.strip()
    assert error.startswith("evaluate: error: ") and message in error and "\n" not in error


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_estimate", "1 of 2 mixtures have no estimate 2 file with the same name"),
        ("folder_count", "2 reference source folders but 1 estimate folders"),
        ("sample_rate", "the mixture is at 8000 Hz but the estimate file .* is at 16000 Hz"),
        ("length", "differ in length"),
    ],
)
def test_separation_bad_input_is_one_clear_error(tmp_path, capsys, breakage, message):
    folders = write_separation_folders(str(tmp_path), count=2, seconds=0.5)
    estimates = [folders["est1"], folders["est2"]]
    if breakage == "missing_estimate":
        os.remove(os.path.join(folders["est2"], "mixture_1.wav"))
    elif breakage == "folder_count":
        estimates = estimates[:1]
    elif breakage == "sample_rate":
        sf.write(os.path.join(folders["est1"], "mixture_0.wav"), np.zeros(8000), 16000)
    elif breakage == "length":
        sf.write(os.path.join(folders["est1"], "mixture_0.wav"), np.zeros(1000), 8000)
    with pytest.raises(EvaluationError, match=message):
        evaluation.evaluate_separation_folders(folders["mix"], [folders["s1"], folders["s2"]], estimates)
    assert run_cli("--task", "separation", "--mix", folders["mix"], "--sources", folders["s1"], folders["s2"],
                   "--estimates", *estimates) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("evaluate: error: ") and "\n" not in error


def write_quality_folders(root, count=2):
    """Noisy speech-like recordings and a 'processed' version with a quarter of the noise."""
    folders = {name: os.path.join(root, name) for name in ("noisy", "enhanced")}
    for folder in folders.values():
        os.makedirs(folder)
    for index in range(count):
        clean = 0.3 * speech_like(3.0, 16000, seed=index)
        noise = 0.1 * pink_noise(3.0, 16000, seed=index + 10)
        sf.write(os.path.join(folders["noisy"], f"rec{index}.wav"), clean + noise, 16000, subtype="FLOAT")
        sf.write(os.path.join(folders["enhanced"], f"rec{index}.wav"), clean + 0.25 * noise, 16000, subtype="FLOAT")
    return folders


def test_dnsmos_scores_real_recordings_without_a_reference():
    clean = 0.3 * speech_like(4.0, 16000, seed=0)
    noisy = clean + 0.1 * pink_noise(4.0, 16000, seed=1)
    clean, noisy = clean / np.abs(noisy).max(), noisy / np.abs(noisy).max()  # noisy peaks at full scale
    scores = {name: evaluation.dnsmos(signal, 16000) for name, signal in (("clean", clean), ("noisy", noisy))}
    for values in scores.values():
        assert sorted(values) == sorted(evaluation.DNSMOS_METRICS)
        assert all(1.0 <= value <= 5.0 for value in values.values()), values
    assert scores["clean"]["dnsmos_bak"] > scores["noisy"]["dnsmos_bak"] + 0.5  # the noise is heard
    # Other rates are resampled to the models' 16 kHz; samples beyond full scale are scaled to it.
    at_48k = evaluation.dnsmos(evaluation.resample(noisy, 16000, 48000), 48000)
    assert at_48k["dnsmos_bak"] == pytest.approx(scores["noisy"]["dnsmos_bak"], abs=0.1)
    assert evaluation.dnsmos(4 * noisy, 16000) == pytest.approx(scores["noisy"], abs=1e-4)


def test_dnsmos_command_scores_a_folder_alone(tmp_path, capsys):
    folders = write_quality_folders(str(tmp_path))
    csv_path = tmp_path / "quality.csv"
    status = run_cli("--dnsmos", folders["enhanced"], "--noisy", folders["noisy"], "--csv", str(csv_path))
    output = capsys.readouterr().out
    assert status == 0, output
    assert "DNSMOS OVRL" in output and "| noisy    |" in output and "| enhanced |" in output
    with open(csv_path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["id"] for row in rows] == ["rec0", "rec1", "avg"]
    for row in rows:
        for metric in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "dnsmos_bak_noisy"):
            assert 1 <= float(row[metric]) <= 5, (metric, row)
    with open(evaluation.summary_path_for(str(csv_path)), newline="", encoding="utf-8") as stream:
        summary = {row["system"]: row for row in csv.DictReader(stream)}
    assert list(summary) == ["noisy", "enhanced"]
    assert float(summary["enhanced"]["dnsmos_bak"]) > float(summary["noisy"]["dnsmos_bak"])

    assert run_cli("--dnsmos", folders["enhanced"]) == 0  # no noisy folder either
    assert "| noisy" not in capsys.readouterr().out


def test_dnsmos_joins_an_evaluation_against_references(tmp_path, capsys):
    folders = write_dns_style_folders(str(tmp_path), count=2)
    csv_path = tmp_path / "r.csv"
    assert run_cli("--clean", folders["clean"], "--enhanced", folders["enhanced"], "--noisy", folders["noisy"],
                   "--dnsmos", "--csv", str(csv_path)) == 0
    output = capsys.readouterr().out
    assert "PESQ-WB" in output and "DNSMOS SIG" in output
    with open(evaluation.summary_path_for(str(csv_path)), newline="", encoding="utf-8") as stream:
        header = next(csv.reader(stream))
    assert header[:5] == ["system", "pesq_wb", "pesq_nb", "stoi", "si_snr"] and "dnsmos_ovrl" in header


@pytest.mark.parametrize("arguments, message", [
    (["--dnsmos", "d", "--clean", "c"], "--dnsmos DIR scores a folder without references"),
    (["--task", "quality"], "--task quality needs --enhanced"),
    (["--task", "quality", "--enhanced", "e", "--plot", "p.png"], "are not its options"),
    (["--dnsmos", "/nonexistent/folder"], "does not exist"),
])
def test_dnsmos_option_errors(capsys, arguments, message):
    assert run_cli(*arguments) in (1, 2)
    assert message in capsys.readouterr().err
