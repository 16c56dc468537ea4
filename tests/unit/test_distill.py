"""Distillation on real tiny models: it wins back accuracy lost to pruning (with and without labels),
keeps sparsity masks, stops early, resumes exactly from a checkpoint, and refuses bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from edgefm.samples import Samples  # noqa: E402
from edgefm.errors import CalibrationError, CheckpointError  # noqa: E402
from edgefm.stages import sparsity  # noqa: E402
from edgefm.stages.distill import DistillConfig, distill_model  # noqa: E402
from edgefm.stages.prune import PruneConfig, prune_model  # noqa: E402
from edgefm.zoo import DigitsCNN, DigitsLSTM, digits_data, train_digits  # noqa: E402

from .test_prune import CNN_SPEC, RNN_SPEC, TXT_SPEC, text_data, tiny_bert  # noqa: E402
FAST = dict(progress=False, threads=1)


@pytest.fixture(scope="module")
def data():
    xtr, ytr, xte, yte = digits_data()
    # early stopping watches a validation split; the figures are taken on the test split
    return Samples({"x": xtr[200:]}, ytr[200:]), Samples({"x": xtr[:200]}, ytr[:200]), Samples({"x": xte}, yte)


@pytest.fixture(scope="module")
def teacher_and_student(data):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = DigitsCNN(width=16)
    train_digits(teacher, epochs=6)
    student, rec = prune_model(teacher.eval(), CNN_SPEC, PruneConfig(macs_target=0.5), data[1])
    assert rec.metrics["macs_ratio"] <= 0.5
    return teacher, student


def _top1(model, samples):
    with torch.no_grad():
        return float((model(torch.from_numpy(samples.inputs["x"])).argmax(1).numpy() == samples.labels).mean())


def test_distillation_wins_back_accuracy(data, teacher_and_student):
    teacher, student = teacher_and_student
    train, val, test = data
    t_acc, s_before = _top1(teacher, test), _top1(student, test)
    out, rec = distill_model(teacher, student, CNN_SPEC, DistillConfig(epochs=8, **FAST), train, val)
    s_after = _top1(out, test)
    assert s_before < t_acc - 0.1  # pruning really cost something …
    assert s_after >= t_acc - 0.02  # … and distillation won it back (2 points on this tiny budget)
    m = rec.metrics
    assert m["projections"] == 1 and m["features"] == 1  # 32 → 16 wide penultimate features
    assert m["after"]["top1"] > m["before"]["top1"] and m["labels"] is True
    assert m["params"] == sum(p.numel() for p in out.parameters())
    assert _top1(student, test) == s_before  # the input student is untouched


def test_unlabeled_data_works(data, teacher_and_student):
    teacher, student = teacher_and_student
    train, val, test = data
    unlabeled = Samples({"x": train.inputs["x"]})
    out, rec = distill_model(teacher, student, CNN_SPEC, DistillConfig(epochs=8, **FAST), unlabeled,
                             Samples({"x": val.inputs["x"]}))
    assert rec.metrics["labels"] is False
    assert "top1" not in rec.metrics["after"]  # no labels anywhere: fidelity to the teacher is the metric
    assert rec.metrics["after"]["top1_agreement"] > 0.95
    assert _top1(out, test) >= _top1(teacher, test) - 0.03


def test_resume_continues_exactly(data, teacher_and_student, tmp_path):
    teacher, student = teacher_and_student
    train = data[0].take(slice(0, 256))
    cfg = dict(epochs=3, batch_size=64, eval_every=6, patience=0, **FAST)
    whole, rec_whole = distill_model(teacher, student, CNN_SPEC, DistillConfig(**cfg), train, data[1])
    ck = tmp_path / "ck.pt"
    _, first = distill_model(teacher, student, CNN_SPEC, DistillConfig(**cfg, max_steps=6, checkpoint=ck), train, data[1])
    assert first.metrics["steps"] == 6 and ck.is_file()
    resumed, rec = distill_model(teacher, student, CNN_SPEC, DistillConfig(**cfg, checkpoint=ck), train, data[1])
    assert rec.metrics["steps"] == rec_whole.metrics["steps"] == 12
    assert [h["step"] for h in rec.metrics["history"]] == [6, 12]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    with pytest.raises(CheckpointError, match="another student"):
        distill_model(teacher, DigitsCNN(width=16), CNN_SPEC, DistillConfig(**cfg, checkpoint=ck), train, data[1])


def test_early_stopping_keeps_the_best(data, teacher_and_student):
    teacher, student = teacher_and_student
    cfg = DistillConfig(epochs=30, lr=3e-2, eval_every=5, patience=2, **FAST)  # lr too high: it wanders
    out, rec = distill_model(teacher, student, CNN_SPEC, cfg, data[0], data[1])
    m = rec.metrics
    assert m["stopped_early"] and m["steps"] < 30 * 17
    best = max([h["score"] for h in m["history"]] + [m["before"]["score"]])
    assert m["after"]["score"] == pytest.approx(best, abs=1e-3)


def test_sparsity_masks_survive_distillation(data, teacher_and_student):
    teacher, _ = teacher_and_student
    sparse, rec = prune_model(teacher, CNN_SPEC, PruneConfig(sparsity="nm"), data[1])
    before = {n: p.detach().clone() for n, p in sparse.named_parameters()}
    out, rec = distill_model(teacher, sparse, CNN_SPEC, DistillConfig(epochs=2, lr=3e-3, **FAST), data[0], data[1])
    changed = [n for n, p in out.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # it trained …
    for m in sparsity.targets(out, [out.classifier]):
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        groups = w[:, : w.shape[1] // 4 * 4].reshape(w.shape[0], -1, 4)
        assert int((groups != 0).sum(-1).max()) <= 2  # … and 2:4 still holds
    assert "weight_orig" not in "".join(out.state_dict())  # plain weights again, ready to export


def test_stacked_lstm_student_with_projection(data):
    torch.manual_seed(0)
    train, val, _ = (Samples({"x": s.inputs["x"][:, 0]}, s.labels) for s in data)
    teacher = DigitsLSTM(hidden=32, layers=2)
    train_digits(teacher, sequence=True, epochs=6)
    student, _ = prune_model(teacher.eval(), RNN_SPEC, PruneConfig(ratio=0.5), val)
    assert student.rnn.hidden_size == 16
    out, rec = distill_model(teacher, student, RNN_SPEC, DistillConfig(epochs=4, **FAST), train, val)
    assert rec.metrics["projections"] == 1
    assert rec.metrics["after"]["top1_agreement"] > rec.metrics["before"]["top1_agreement"]


def test_layer_dropped_transformer_matches_layers():
    teacher = tiny_bert()
    train, val = text_data(64, seed=1), text_data(24, seed=2)
    student, _ = prune_model(teacher, TXT_SPEC, PruneConfig(num_layers=2), val)
    out, rec = distill_model(teacher, student, TXT_SPEC, DistillConfig(epochs=6, batch_size=16, lr=1e-3, **FAST),
                             train, val)
    m = rec.metrics
    assert m["features"] == 2 and m["projections"] == 0  # student layer i ↔ the teacher layer it came from
    assert m["after"]["cosine"] > m["before"]["cosine"]


def test_bad_data_is_a_clear_error(data, teacher_and_student):
    teacher, student = teacher_and_student
    with pytest.raises(CalibrationError, match="training"):
        distill_model(teacher, student, CNN_SPEC, DistillConfig(**FAST), Samples({"x": np.zeros((4, 8, 8), np.float32)}))
    with pytest.raises(CalibrationError, match="none"):
        distill_model(teacher, student, CNN_SPEC, DistillConfig(**FAST), Samples({}))
