"""normlab.summary: Keras's counts for the model of the tutorial "Batch Normalization", and the rules behind them."""

import torch
from torch import nn

import normlab


def tutorial_model():
    """The Keras model of the tutorial "Batch Normalization" (a 3-minute read), in PyTorch with normlab's BN
    (L2 regularization lives in the optimizer)."""
    return nn.Sequential(
        nn.Linear(20, 64), normlab.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(64, 32), normlab.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 1), nn.Sigmoid(),
    )


def test_tutorial_model_counts_like_keras():
    s = normlab.summary(tutorial_model(), (20,))
    assert (s.total, s.trainable, s.non_trainable) == (3841, 3649, 192)
    text = str(s)
    assert "Total params: 3,841 (15.00 KB)" in text
    assert "Trainable params: 3,649 (14.25 KB)" in text
    assert "Non-trainable params: 192 (768.00 B)" in text
    assert [r.params for r in s.rows] == [1344, 256, 0, 0, 2080, 128, 0, 0, 33, 0]
    assert s.rows[1].output_shape == "(None, 64)" and s.rows[1].kind == "BatchNorm1d"


def test_model_state_is_untouched():
    model = tutorial_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    normlab.summary(model, (20,))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_frozen_parameters_are_non_trainable_and_shared_ones_count_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin, torch.nn.BatchNorm1d(4))
    model[3].weight.requires_grad_(False)
    s = normlab.summary(model, (4,))
    assert s.trainable == 20 + 4  # the linear once, the BN bias
    assert s.non_trainable == 4 + 8  # the frozen BN weight, running mean and var
    lin_row = next(r for r in s.rows if r.kind == "Linear")
    assert lin_row.calls == 2 and "x2" in str(s)


def test_input_data_and_several_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(5, 2)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    s = normlab.summary(Two(), [(3,), (5,)])
    assert s.total == 8 + 12
    s2 = normlab.summary(Two(), input_data=(torch.zeros(7, 3), torch.zeros(7, 5)))
    assert [r.output_shape for r in s2.rows] == ["(None, 2)", "(None, 2)"]
