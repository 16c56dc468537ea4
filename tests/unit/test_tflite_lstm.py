"""edgefm's fused-LSTM rewrite for LiteRT, torch side: the replacement computes what nn.LSTM computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgefm.backends import tflite_lstm  # noqa: E402


@pytest.mark.parametrize("batch_first", [True, False])
def test_fused_lstm_equals_torch(batch_first):
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(5, 12, num_layers=3, batch_first=batch_first)

        def forward(self, x):
            y, (h, _) = self.rnn(x)
            return y, h

    net = Net().eval()
    fused, n = tflite_lstm.fuse(net)
    assert n == 1 and fused is not net and type(net.rnn) is torch.nn.LSTM  # the user's model is untouched
    x = torch.randn(4, 7, 5) if batch_first else torch.randn(7, 4, 5)
    with torch.no_grad():
        (y0, h0), (y1, h1) = net(x), fused(x)
    torch.testing.assert_close(y1, y0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h1, h0, atol=1e-6, rtol=1e-5)
    # torch.export sees one custom op per layer, not the unrolled recurrence
    ep = torch.export.export(fused, (x,))
    calls = [node for node in ep.graph.nodes if node.op == "call_function" and "lstm_layer" in str(node.target)]
    assert len(calls) == 3


def test_ineligible_modules_stay():
    net = torch.nn.Sequential(torch.nn.GRU(4, 8), torch.nn.LSTM(4, 8, bidirectional=True))
    same, n = tflite_lstm.fuse(net)
    assert n == 0 and same is net


def test_initial_state_is_refused_so_the_caller_falls_back():
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    fused, _ = tflite_lstm.fuse(torch.nn.Sequential(lstm))
    with pytest.raises(NotImplementedError):
        fused[0](torch.randn(1, 2, 3), (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)))
