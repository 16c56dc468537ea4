"""A small streaming model like silero-vad, built in code for tests: a chunk of audio (batch, 64), a recurrent
state (layers=2, batch, 32) carried from call to call, and a scalar sample rate; outputs a speech probability
(batch, 1) and the next state. ``stream_gru`` is an ``--arch`` factory; ``scripted`` gives the TorchScript form
whose forward takes ``sr: int`` (a non-tensor argument), as silero's JIT model does."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CHUNK, HIDDEN, LAYERS, FRAMES = 64, 32, 2, 4


class StreamGRU(nn.Module):
    __constants__ = ["frames", "width"]

    def __init__(self, cell: str = "gru"):
        super().__init__()
        self.frames, self.width = FRAMES, CHUNK // FRAMES
        self.front = nn.Linear(CHUNK // FRAMES, 16)
        rnn = nn.GRU if cell == "gru" else nn.RNN
        self.rnn = rnn(16, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor, sr: torch.Tensor):
        scale = sr.to(torch.float32) / 16000.0
        frames = torch.relu(self.front((x * scale).reshape(x.shape[0], self.frames, self.width)))
        out, state_n = self.rnn(frames, state)
        return torch.sigmoid(self.head(out[:, -1])), state_n


class StreamLSTM(nn.Module):
    """Silero's layout: one LSTM layer whose (h, c) travel packed as one state (2, batch, HIDDEN)."""

    __constants__ = ["frames", "width"]

    def __init__(self):
        super().__init__()
        self.frames, self.width = FRAMES, CHUNK // FRAMES
        self.front = nn.Linear(CHUNK // FRAMES, 16)
        self.rnn = nn.LSTM(16, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor, sr: torch.Tensor):
        scale = sr.to(torch.float32) / 16000.0
        frames = torch.relu(self.front((x * scale).reshape(x.shape[0], self.frames, self.width)))
        out, (h, c) = self.rnn(frames, (state[0:1], state[1:2]))
        return torch.sigmoid(self.head(out[:, -1])), torch.cat([h, c], 0)


def stream_lstm() -> nn.Module:
    torch.manual_seed(0)
    return StreamLSTM()


class StftLSTM(nn.Module):
    """silero-vad's front end in small: a strided Conv1d "STFT" whose output channels are split into real and
    imaginary halves (a Slice on the channel axis of a 3-D tensor), the magnitude through a Conv1d, then one LSTM
    whose (h, c) travel packed as the state (2, batch, HIDDEN). Scripted, its export writes each ``z[:, :8, :]``
    as a chain of Slices, two of them full-range, as silero's ONNX has them."""

    def __init__(self):
        super().__init__()
        self.stft = nn.Conv1d(1, 16, 16, stride=8, bias=False)
        self.enc = nn.Conv1d(8, 16, 3, padding=1)
        self.rnn = nn.LSTM(16, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        z = self.stft(x.unsqueeze(1))
        re, im = z[:, :8, :], z[:, 8:, :]
        mag = torch.sqrt(re * re + im * im + 1e-6)
        f = torch.relu(self.enc(mag)).mean(2, keepdim=True).transpose(1, 2)
        out, (h, c) = self.rnn(f, (state[0:1], state[1:2]))
        return torch.sigmoid(self.head(out[:, -1])), torch.cat([h, c], 0)


def scripted_stft_lstm() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(StftLSTM().eval())


class ScriptedStreamGRU(nn.Module):
    """The same network with ``sr: int`` and data-dependent control flow, meant for ``torch.jit.script``."""

    def __init__(self):
        super().__init__()
        self.net = StreamGRU()

    def forward(self, x: torch.Tensor, state: torch.Tensor, sr: int):
        if sr != 16000 and sr != 8000:
            raise ValueError("unsupported sample rate")
        if x.dim() == 1:
            x = x.unsqueeze(0)
        return self.net(x, state, torch.tensor(sr))


def stream_gru() -> nn.Module:
    """``--arch`` factory (seeded, so a state_dict saved from it loads back)."""
    torch.manual_seed(0)
    return StreamGRU()


def scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    m = ScriptedStreamGRU().eval()
    return torch.jit.script(m)


def streams(n: int = 24, chunks: int = 6, seed: int = 0) -> np.ndarray:
    """(streams, chunks, CHUNK) float32 "audio": noise with a tone switching on and off, so the state matters."""
    rng = np.random.default_rng(seed)
    t = np.arange(chunks * CHUNK) / 16000.0
    out = []
    for _ in range(n):
        f = rng.uniform(200, 2000)
        on = (np.sin(2 * np.pi * rng.uniform(5, 40) * t) > 0).astype(np.float32)
        sig = 0.5 * on * np.sin(2 * np.pi * f * t) + 0.1 * rng.standard_normal(t.shape)
        out.append(sig.astype(np.float32).reshape(chunks, CHUNK))
    return np.stack(out)


INPUTS = ["x:batch,64", "state:2,batch,32", "sr:scalar:int64=16000"]
STATE = ["state:output"]


CONTEXT = 16  # samples of the previous chunk the inner model sees in front of each new chunk (silero: 64)


class ChunkLSTM(nn.Module):
    """The stateless inner model: forward(x (batch, CONTEXT + CHUNK), state (2, batch, HIDDEN)) ->
    (prob (batch, 1), next state)."""

    def __init__(self):
        super().__init__()
        self.front = nn.Linear(16, 16)
        self.rnn = nn.LSTM(16, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        frames = torch.relu(self.front(x.reshape(x.shape[0], -1, 16)))
        out, (h, c) = self.rnn(frames, (state[0:1], state[1:2]))
        return torch.sigmoid(self.head(out[:, -1])), torch.cat([h, c], 0)


class AttrStateVAD(nn.Module):
    """silero-vad's ``.jit`` layout: ``forward(x, sr: int)`` takes only the new samples and keeps the LSTM
    state and the audio context in module attributes between calls; ``_model`` takes them explicitly."""

    def __init__(self):
        super().__init__()
        self._model = ChunkLSTM()
        self.context_size, self.hidden = CONTEXT, HIDDEN
        self._state = torch.zeros(0)
        self._context = torch.zeros(0)

    @torch.jit.export
    def reset_states(self):
        self._state = torch.zeros(0)
        self._context = torch.zeros(0)

    def forward(self, x: torch.Tensor, sr: int):
        if sr != 16000:
            raise ValueError("unsupported sample rate")
        if not len(self._context):
            self._context = torch.zeros(x.shape[0], self.context_size)
        if not len(self._state):
            self._state = torch.zeros(2, x.shape[0], self.hidden)
        x = torch.cat([self._context, x], 1)
        out, state = self._model(x, self._state)
        self._state = state
        self._context = x[:, -self.context_size:]
        return out


def attr_state_scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(AttrStateVAD().eval())


def with_context(streams: np.ndarray) -> np.ndarray:
    """(streams, chunks, CHUNK) -> (streams, chunks, CONTEXT + CHUNK): each chunk with the last CONTEXT samples
    of the one before (zeros before the first), as ``AttrStateVAD`` feeds ``_model``."""
    prev = np.concatenate([np.zeros_like(streams[:, :1, -CONTEXT:]), streams[:, :-1, -CONTEXT:]], 1)
    return np.ascontiguousarray(np.concatenate([prev, streams], 2))
class StreamCell(nn.Module):
    """silero's recurrent core written out (as its 16 kHz torch port is): an LSTM cell as two Gemms plus gate
    arithmetic, (h, c) carried as one state (2, batch, HIDDEN). One cell-state channel sits at a large constant
    level (a forget gate of ~1 and a saturated input gate), as long-memory LSTM units do: quantizing the gate
    arithmetic (ORT's default static QDQ rounds every Mul/Add output onto one 8-bit grid per tensor) crushes the
    other channels of c, while quantizing only the Gemm inputs (x and h, both bounded) keeps the state."""

    def __init__(self):
        super().__init__()
        self.front = nn.Linear(CHUNK, 16)
        self.cell = nn.LSTMCell(16, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)
        with torch.no_grad():
            b = self.cell.bias_ih
            b[0], b[HIDDEN] = 40.0, 40.0      # unit 0: input and forget gates saturate at 1
            b[2 * HIDDEN] = 40.0              # and its candidate is +1: c[0] grows by 1 per call

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        p = self.cell
        u = torch.relu(self.front(x))
        g = nn.functional.linear(u, p.weight_ih, p.bias_ih) + nn.functional.linear(state[0], p.weight_hh, p.bias_hh)
        i, f = torch.sigmoid(g[:, :HIDDEN]), torch.sigmoid(g[:, HIDDEN:2 * HIDDEN])
        gg, o = torch.tanh(g[:, 2 * HIDDEN:3 * HIDDEN]), torch.sigmoid(g[:, 3 * HIDDEN:])
        c = f * state[1] + i * gg
        h = o * torch.tanh(c)
        return torch.sigmoid(self.head(h)), torch.stack([h, c])


def stream_cell() -> nn.Module:
    torch.manual_seed(0)
    return StreamCell()
