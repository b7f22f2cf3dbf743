"""Causal FRCRN and its real-time streaming front (FRCRNStreamer)."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.inference.streaming import FRCRNStreamer, stream_file
from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.lobes.models.frcrn import ComplexConvBlock
from speechbrain_ext.nnet.complex import ComplexConv2d, ComplexConvTranspose2d, ComplexSqueezeExcitation
from speechbrain_ext.nnet.fsmn import ComplexFSMN

from conftest import randomize_

SMALL = dict(channels=8, fsmn_hidden=8, fsmn_order=4)
LATENCY = 640  # one window at the default 640 / 320 framing
HOP = 320


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models and single frames: one thread is faster, and robust on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def causal_model():
    """A small causal FRCRN with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    return randomize_(FRCRN(causal=True, **SMALL), seed=0).eval()


def noisy_signal(length, seed=0, batch=None):
    generator = torch.Generator().manual_seed(seed)
    shape = (length,) if batch is None else (batch, length)
    return 0.1 * torch.randn(shape, generator=generator)


def offline(model, signal):
    """The documented reference: the offline causal forward of the input plus one window of zeros."""
    single = signal.dim() == 1
    batch = signal[None] if single else signal
    with torch.no_grad():
        out = model(F.pad(batch, (0, LATENCY)))[:, : batch.shape[-1]]
    return out[0] if single else out


def stream(streamer, signal, block_sizes):
    """Feed ``signal`` in blocks of the given sizes (cycled); returns every output and the flush."""
    outputs, position, index = [], 0, 0
    while position < signal.shape[-1]:
        size = block_sizes[index % len(block_sizes)]
        block = signal[..., position : position + size]
        out = streamer.process(block)
        assert out.shape == block.shape  # as many samples out as in
        outputs.append(out)
        position += size
        index += 1
    tail = streamer.flush()
    assert tail.shape[-1] == streamer.latency
    return outputs, tail


def test_causal_model_has_the_official_parameters():
    official, causal = FRCRN(**SMALL), FRCRN(causal=True, **SMALL)
    shapes = {name: tensor.shape for name, tensor in official.state_dict().items()}
    assert shapes == {name: tensor.shape for name, tensor in causal.state_dict().items()}
    causal.load_state_dict(official.state_dict())  # official weights initialise a causal model
    with open("hparams/frcrn.yaml") as stream_:
        from_yaml = load_hyperpyyaml(stream_, {"channels": 8, "fsmn_hidden": 8, "causal": True})["model"]
    assert from_yaml.causal and isinstance(from_yaml, FRCRN)


def test_causal_layers_match_the_official_ones_shifted():
    """Same weights: the causal encoder convolution is the official one without its extra last
    frame, the causal decoder convolution the official one a frame later."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 21, 9)
    official = ComplexConv2d(3, 4, (5, 2), (2, 1), (0, 1))
    causal = ComplexConv2d(3, 4, (5, 2), (2, 1), (0, 0), causal=True)
    causal.load_state_dict(official.state_dict())
    assert torch.equal(causal(x), official(x)[..., :9])
    official_t = ComplexConvTranspose2d(3, 4, (5, 2), (2, 1), (0, 1))
    causal_t = ComplexConvTranspose2d(3, 4, (5, 2), (2, 1), (0, 0), causal=True)
    causal_t.load_state_dict(official_t.state_dict())
    assert torch.allclose(causal_t(x)[..., 1:], official_t(x), atol=1e-6)


def stepped(layer, x, pieces=(1, 3, 1, 2)):
    """``layer`` run on ``x`` in pieces of the given numbers of frames, carrying its state."""
    weights, state, outputs, start = layer.fused_weights(), None, [], 0
    for size in pieces:
        out, state = layer.step(x[..., start : start + size], state, weights)
        outputs.append(out)
        start += size
    return torch.cat(outputs, dim=-1)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("kernel,stride,padding", [((5, 2), 2, 0), ((6, 2), 2, 0), ((2, 2), 2, 0), ((3, 3), 1, 1),
                                                   ((4, 1), 3, 1)])
def test_every_layer_steps_like_its_forward(transposed, kernel, stride, padding):
    """``step`` evaluates each layer in a form suited to a frame at a time (one real convolution
    with the batch norm folded in, polyphase transposed convolutions, matrix products): pinned
    here to ``forward`` for several geometries, so the two cannot drift apart."""
    torch.manual_seed(0)
    block = randomize_(ComplexConvBlock(3, 4, kernel, (stride, 1), (padding, 0), transposed, causal=True), 0).eval()
    x = torch.randn(2, 6, 13, 7)
    with torch.no_grad():
        assert (stepped(block, x) - block(x)).abs().max() <= 1e-5
    layers = [ComplexFSMN(4, 6, 5, "freq"), ComplexFSMN(4, 6, 5, "time"), ComplexSqueezeExcitation(4, 2, causal=True)]
    for layer in layers:
        layer = randomize_(layer, 0).eval()
        x = torch.randn(2, 8, 1 if layer is layers[1] else 11, 7)
        with torch.no_grad():
            assert (stepped(layer, x) - layer(x)).abs().max() <= 1e-5, type(layer).__name__


@pytest.mark.parametrize("change_at", [5000 + 37, 6400])  # inside a hop, and on a hop boundary
def test_offline_causal_forward_ignores_the_future(causal_model, change_at):
    signal = noisy_signal(12000, seed=1)[None]
    changed = signal.clone()
    changed[:, change_at:] = noisy_signal(12000 - change_at, seed=2)
    with torch.no_grad():
        before, after = causal_model(signal), causal_model(changed)
    unchanged = change_at - LATENCY
    assert torch.equal(before[:, :unchanged], after[:, :unchanged])
    assert not torch.equal(before[:, unchanged + HOP :], after[:, unchanged + HOP :])
    # The official model, by contrast, pools its attention over the whole utterance.
    official = FRCRN(**SMALL).eval()
    official.load_state_dict(causal_model.state_dict())
    with torch.no_grad():
        assert not torch.equal(official(signal)[:, :unchanged], official(changed)[:, :unchanged])


@pytest.mark.parametrize("block_sizes", [[1], [77], [320], [1000], [640, 5, 333, 1, 1279]], ids=str)
def test_streaming_equals_the_offline_causal_forward(causal_model, block_sizes):
    length = 16000 + 123  # not a whole number of hops
    signal = noisy_signal(length, seed=3)
    outputs, tail = stream(FRCRNStreamer(causal_model), signal, block_sizes)
    streamed = torch.cat(outputs + [tail])
    assert streamed.shape == (length + LATENCY,)
    assert not streamed[:LATENCY].any()  # the first window: silence
    # Output sample L + n is enhanced sample n.
    assert (streamed[LATENCY:] - offline(causal_model, signal)).abs().max() <= 1e-5


def test_latency_is_one_window(causal_model):
    """Each output sample leaves with the input sample ``latency`` samples after it: after
    ``n`` input samples, the ``n - latency`` first enhanced samples are out, no more."""
    streamer = FRCRNStreamer(causal_model)
    assert streamer.latency == LATENCY and streamer.latency_seconds == 0.04
    signal = noisy_signal(4000, seed=4)
    reference = offline(causal_model, signal)
    received = torch.cat([streamer.process(signal[:2345]), streamer.process(signal[2345:2346])])
    assert received.shape == (2346,)
    assert (received[LATENCY:] - reference[: 2346 - LATENCY]).abs().max() <= 1e-5
    # process() runs on one thread by default and gives the caller's setting back.
    torch.set_num_threads(2)
    try:
        streamer.process(signal[2346:3000])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_batched_streams_and_reset(causal_model):
    signal = noisy_signal(5000, seed=5, batch=2)
    streamer = FRCRNStreamer(causal_model)
    first = torch.cat(stream(streamer, signal, [320])[0], dim=-1)  # flush() resets
    again = torch.cat(stream(streamer, signal, [999])[0], dim=-1)
    assert first.shape == (2, 5000)
    assert (first[:, LATENCY:] - offline(causal_model, signal)[:, : 5000 - LATENCY]).abs().max() <= 1e-5
    assert (again - first).abs().max() <= 1e-6
    streamer.process(signal[:, :100])
    with pytest.raises(ValueError, match="channels"):
        streamer.process(signal[:1, :100])
    streamer.reset()
    assert streamer.process(signal[0, :100]).shape == (100,)


def state_size(streamer):
    """Total elements of the stream's state tensors, and the lengths of every container in it."""
    tensors = sum(t.numel() for t in streamer.state_tensors())
    lengths = []
    pending = [vars(streamer), vars(streamer._layers)]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            lengths.append(len(item))
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            lengths.append(len(item))
            pending.extend(item)
    return tensors, sorted(lengths)


def test_stream_state_is_bounded(causal_model):
    """The state is allocated by the first frame and replaced by tensors of the same shapes at
    every hop, so its size after 1 s and 10 s is the same, and would be after hours: every hop
    is the same computation on the same state (10 minutes, 30,000 hops, would take minutes
    here). The running means keep their accuracy over long streams: see
    test_running_mean_over_a_long_stream."""
    streamer = FRCRNStreamer(causal_model)
    signal = noisy_signal(16000, seed=6)
    sizes = []
    for seconds in range(1, 11):
        for block in signal.split(HOP):
            streamer.process(block)
        if seconds in (1, 10):
            sizes.append(state_size(streamer))
    assert sizes[0] == sizes[1]
    shapes = [t.shape for t in streamer.state_tensors()]
    streamer.process(signal[:HOP])
    assert [t.shape for t in streamer.state_tensors()] == shapes
    # The frame count of the running means is a plain int, not a growing tensor or list.
    counts = [state[1] for state in streamer._layers.states.values() if isinstance(state, tuple)]
    assert counts and all(isinstance(c, int) and c == (10 * 16000 + HOP - 640) // HOP + 1 for c in counts)


def test_running_mean_over_a_long_stream():
    """10 minutes of frames (30,000) through a causal squeeze-excitation, step by step, give the
    offline cumulative mean: the float64 running sum does not drift."""
    torch.manual_seed(0)
    gate = ComplexSqueezeExcitation(8, reduction=4, causal=True).eval()
    frames = 1.0 + torch.randn(1, 16, 3, 30000)  # a large mean: the hardest case for a float sum
    with torch.inference_mode():
        whole = gate(frames)
        weights, state, last = gate.fused_weights(), None, None
        for t in range(frames.shape[-1]):
            last, state = gate.step(frames[..., t : t + 1], state, weights)
    assert state[1] == 30000
    assert (last - whole[..., -1:]).abs().max() <= 1e-5


def test_non_causal_model_cannot_stream():
    with pytest.raises(ValueError, match="causal"):
        FRCRNStreamer(FRCRN(**SMALL))


@pytest.mark.parametrize("align", [True, False])
def test_stream_file(causal_model, tmp_path, align):
    signal = noisy_signal(7001, seed=8)
    sf.write(tmp_path / "noisy.wav", signal.numpy(), 16000, subtype="FLOAT")
    info = stream_file(causal_model, tmp_path / "noisy.wav", tmp_path / "out.wav", block_size=77, align=align,
                       subtype="FLOAT")
    written, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 16000 and written.shape == (7001,)
    assert info["latency_seconds"] == 0.04 and info["real_time_factor"] > 0
    expected = offline(causal_model, signal).numpy()
    if not align:  # what a live output would play: the enhanced signal, a window late
        expected = np.concatenate([np.zeros(LATENCY, np.float32), expected[: 7001 - LATENCY]])
    assert np.abs(written - expected).max() <= 1e-5


def test_stream_file_at_the_input_rate(causal_model, tmp_path):
    sf.write(tmp_path / "noisy.flac", noisy_signal(4410, seed=9).numpy(), 44100)
    info = stream_file(causal_model, tmp_path / "noisy.flac", tmp_path / "out.wav", output_rate="input")
    assert info["sample_rate"] == 44100 and sf.info(tmp_path / "out.wav").frames == 4410
    with pytest.raises(ValueError, match="causal"):
        stream_file(FRCRN(**SMALL), tmp_path / "noisy.flac", tmp_path / "other.wav")
    assert not (tmp_path / "other.wav").exists()
