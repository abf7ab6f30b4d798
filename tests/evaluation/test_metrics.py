"""Metrics: values against hand computations in NumPy, masks, shapes and validation messages."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesmeta.evaluation import (
    accuracy,
    categorical_nll,
    expected_calibration_error,
    gaussian_nll,
    interval_coverage,
    mse,
    summarize,
)

T, N, Y = 4, 6, 2


@pytest.fixture
def data():
    """Ragged tasks: task t observes its first ``counts[t]`` points; the padding holds garbage."""
    rng = np.random.default_rng(0)
    counts = np.array([6, 3, 1, 4])
    mask = np.arange(N)[None, :] < counts[:, None]
    arrays = {
        "mean": rng.normal(size=(T, N, Y)),
        "std": rng.uniform(0.5, 2.0, size=(T, N, Y)),
        "y": rng.normal(size=(T, N, Y)),
        "half": rng.uniform(0.2, 1.5, size=(T, N, Y)),
    }
    return arrays, mask, counts


def _tensors(arrays, mask, garbage=None):
    """float64 tensors; with ``garbage``, every padded entry is replaced by it (NaN, Inf, a huge number)."""
    out = {}
    for name, value in arrays.items():
        value = value.copy()
        if garbage is not None:
            value[~mask] = garbage
        out[name] = torch.tensor(value)
    return out


def _numpy_reference(arrays, mask, counts):
    """Loops over tasks and observed points, written from the definitions."""
    m, s, y, h = arrays["mean"], arrays["std"], arrays["y"], arrays["half"]
    ref = {"mse": [], "nll": [], "cov": []}
    for t in range(T):
        obs = slice(0, counts[t])
        err = m[t, obs] - y[t, obs]
        ref["mse"].append(np.mean(err**2))
        log_pdf = -0.5 * np.log(2 * np.pi * s[t, obs] ** 2) - err**2 / (2 * s[t, obs] ** 2)
        ref["nll"].append(-np.sum(log_pdf) / counts[t])  # outputs of a point summed, points averaged
        inside = (m[t, obs] - h[t, obs] <= y[t, obs]) & (y[t, obs] <= m[t, obs] + h[t, obs])
        ref["cov"].append(np.mean(inside))
    assert mask.sum(1).tolist() == counts.tolist()
    return {k: np.array(v) for k, v in ref.items()}


def _all_metrics(t, mask):
    mask = torch.as_tensor(mask)
    return {
        "mse": mse(t["mean"], t["y"], mask),
        "nll": gaussian_nll(t["mean"], t["std"], t["y"], mask),
        "cov": interval_coverage(t["mean"] - t["half"], t["mean"] + t["half"], t["y"], mask),
    }


def test_metrics_match_numpy_reference(data):
    arrays, mask, counts = data
    ref = _numpy_reference(arrays, mask, counts)
    got = _all_metrics(_tensors(arrays, mask), mask)
    for name in ref:
        assert got[name].shape == (T,)
        np.testing.assert_allclose(got[name].numpy(), ref[name], rtol=1e-12, err_msg=name)
    # the coverages are not all 0 or 1: the check exercises partial counts
    assert 0 < ref["cov"].mean() < 1


@pytest.mark.parametrize("garbage", [math.nan, math.inf, -1e30, 0.0])
def test_padding_does_not_change_results(data, garbage):
    arrays, mask, counts = data
    clean = _all_metrics(_tensors(arrays, mask), mask)
    dirty = _all_metrics(_tensors(arrays, mask, garbage=garbage), mask)
    for name in clean:
        torch.testing.assert_close(dirty[name], clean[name], rtol=0, atol=0, msg=name)


def test_mask_none_means_every_point(data):
    arrays, _, _ = data
    full = np.ones((T, N), dtype=bool)
    ref = _numpy_reference(arrays, full, np.full(T, N))
    t = _tensors(arrays, full)
    np.testing.assert_allclose(mse(t["mean"], t["y"]).numpy(), ref["mse"], rtol=1e-12)
    np.testing.assert_allclose(gaussian_nll(t["mean"], t["std"], t["y"], None).numpy(), ref["nll"], rtol=1e-12)


def test_known_values():
    y = torch.tensor([[[0.0], [2.0]]])
    assert mse(torch.tensor([[[1.0], [0.0]]]), y).tolist() == [2.5]  # (1 + 4) / 2
    # standard normal at its mean: 0.5 log(2 pi); std 2 at distance 2: 0.5 + log 2 + 0.5 log(2 pi)
    nll = gaussian_nll(torch.zeros(1, 2, 1), torch.tensor([[[1.0], [2.0]]]), y)
    expected = 0.5 * math.log(2 * math.pi) + 0.5 * (0.5 + math.log(2.0))
    assert nll.item() == pytest.approx(expected, rel=1e-6)
    # interval ends are included
    assert interval_coverage(torch.zeros(1, 2, 1), torch.full((1, 2, 1), 2.0), y).tolist() == [1.0]


def test_summarize_matches_numpy():
    values = np.array([0.3, 1.7, 2.2, 0.9, 1.1])
    mean, se = summarize(torch.tensor(values, dtype=torch.float32))
    assert mean == pytest.approx(values.mean(), rel=1e-6)
    assert se == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)), rel=1e-6)
    assert isinstance(mean, float) and isinstance(se, float)


def test_summarize_single_task_has_undefined_se():
    mean, se = summarize(torch.tensor([2.0]))
    assert mean == 2.0 and math.isnan(se)


def test_float32_inputs_keep_their_dtype():
    out = mse(torch.zeros(2, 3, 1), torch.ones(2, 3, 1))
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.0]


Z3 = torch.zeros(2, 3, 1)
BAD_CALLS = {
    "y 2-D": (lambda: mse(Z3, torch.zeros(2, 3)),
              r"y: expected shape num_tasks x num_points x y_dim.*\(2, 3\).*y\[\.\.\., None\]"),
    "pred_mean shape": (lambda: mse(torch.zeros(2, 4, 1), Z3),
                        r"pred_mean: expected shape \(2, 3, 1\).*got shape \(2, 4, 1\)"),
    "pred_std shape": (lambda: gaussian_nll(Z3, torch.ones(2, 3), Z3), r"pred_std: expected shape \(2, 3, 1\)"),
    "upper shape": (lambda: interval_coverage(Z3, torch.ones(1, 3, 1), Z3), r"upper: expected shape"),
    "mask dtype": (lambda: mse(Z3, Z3, torch.ones(2, 3)),
                   r"mask: expected a bool tensor of shape \(2, 3\).*got torch.float32"),
    "mask shape": (lambda: mse(Z3, Z3, torch.ones(3, 2, dtype=torch.bool)),
                   r"mask: .*got torch.bool of shape \(3, 2\)"),
    "empty task": (lambda: mse(Z3, Z3, torch.tensor([[True] * 3, [False] * 3])),
                   r"mask: expected at least one observed point per task.*task 1"),
    "zero std": (lambda: gaussian_nll(torch.zeros(1, 2, 1), torch.tensor([[[1.0], [0.0]]]), torch.zeros(1, 2, 1)),
                 r"pred_std: expected > 0.*task 0, point 1"),
    "summarize 2-D": (lambda: summarize(torch.zeros(2, 2)), r"values: expected a non-empty 1-D tensor.*\(2, 2\)"),
    "summarize NaN": (lambda: summarize(torch.tensor([1.0, math.nan])),
                      r"values: expected finite scores, got 1 NaN/Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_validation_messages(case):
    call, match = BAD_CALLS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_targets_are_rejected():
    with pytest.raises(TypeError, match=r"y: expected a floating-point tensor, got torch.int64"):
        mse(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1, dtype=torch.long))


def test_zero_std_at_padding_is_allowed():
    std = torch.tensor([[[1.0], [0.0]]])
    mask = torch.tensor([[True, False]])
    assert gaussian_nll(torch.zeros(1, 2, 1), std, torch.zeros(1, 2, 1), mask).item() == pytest.approx(
        0.5 * math.log(2 * math.pi)
    )


# ---------------------------------------------------------------------- classification
C = 3


@pytest.fixture
def class_data():
    """Ragged classification tasks (as ``data``): Dirichlet probabilities, uniform labels."""
    rng = np.random.default_rng(1)
    counts = np.array([6, 3, 1, 4])
    mask = np.arange(N)[None, :] < counts[:, None]
    probs = rng.dirichlet(np.full(C, 0.7), size=(T, N))
    labels = rng.integers(0, C, size=(T, N))
    return probs, labels, mask, counts


def _class_reference(probs, labels, counts, bins=15):
    """Loops over tasks, points and bins, written from the definitions (Guo et al. 2017 for the ECE)."""
    ref = {"acc": [], "nll": [], "ece": []}
    for t in range(T):
        p, y = probs[t, : counts[t]], labels[t, : counts[t]]
        conf, correct = p.max(-1), p.argmax(-1) == y
        ref["acc"].append(correct.mean())
        ref["nll"].append(-np.mean(np.log(p[np.arange(len(y)), y])))
        ece = 0.0
        for m in range(1, bins + 1):
            in_bin = (conf > (m - 1) / bins) & (conf <= m / bins)
            if in_bin.any():
                ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
        ref["ece"].append(ece)
    return {k: np.array(v) for k, v in ref.items()}


def _class_metrics(probs, labels, mask, bins=15):
    return {
        "acc": accuracy(probs, labels, mask),
        "nll": categorical_nll(probs, labels, mask),
        "ece": expected_calibration_error(probs, labels, mask, bins=bins),
    }


@pytest.mark.parametrize("bins", [15, 4])
def test_classification_metrics_match_numpy_reference(class_data, bins):
    probs, labels, mask, counts = class_data
    ref = _class_reference(probs, labels, counts, bins)
    got = _class_metrics(torch.tensor(probs), torch.tensor(labels), torch.tensor(mask), bins)
    for name in ref:
        assert got[name].shape == (T,) and got[name].dtype == torch.float64
        np.testing.assert_allclose(got[name].numpy(), ref[name], rtol=1e-12, atol=1e-15, err_msg=name)
    assert 0 < ref["acc"].mean() < 1 and ref["ece"].min() > 0  # partial counts exercised


@pytest.mark.parametrize("garbage", [math.nan, math.inf, -1.0, 7.0])
def test_classification_padding_does_not_change_results(class_data, garbage):
    probs, labels, mask, _ = class_data
    clean = _class_metrics(torch.tensor(probs), torch.tensor(labels), torch.tensor(mask))
    dirty_probs, dirty_labels = probs.copy(), labels.copy()
    dirty_probs[~mask] = garbage
    dirty_labels[~mask] = -5 if garbage < 0 else 99  # out-of-range labels at padding are ignored too
    dirty = _class_metrics(torch.tensor(dirty_probs), torch.tensor(dirty_labels), torch.tensor(mask))
    for name in clean:
        torch.testing.assert_close(dirty[name], clean[name], rtol=0, atol=0, msg=name)
    # the same as scoring the last task's observed points alone
    alone = _class_metrics(torch.tensor(probs[3:, :4]), torch.tensor(labels[3:, :4]), None)
    for name in clean:
        torch.testing.assert_close(alone[name], clean[name][3:], rtol=1e-12, atol=1e-15, msg=name)


def test_accuracy_known_value():
    probs = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]]])
    assert accuracy(probs, torch.tensor([[0, 1, 0]])).item() == pytest.approx(2 / 3)
    assert accuracy(probs, torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, True]])).tolist() == [1.0]


def test_categorical_nll_is_minus_log_true_class_probability():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.3, 0.7]]], dtype=torch.float64)
    nll = categorical_nll(probs, torch.tensor([[0, 0], [1, 1]]))
    expected = [-(math.log(0.9) + math.log(0.2)) / 2, -(math.log(0.5) + math.log(0.7)) / 2]
    assert nll.tolist() == pytest.approx(expected, rel=1e-12)
    # a zero probability on the true class is floored at the dtype's tiny, not inf
    zero = categorical_nll(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[1]]))
    assert zero.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-5)


def test_ece_of_a_calibrated_construction_is_zero():
    # 4 points at confidence 0.75 with 3 right, 2 at confidence 1 both right, 2 at 0.5 with 1 right
    rows = [[0.75, 0.25]] * 4 + [[0.0, 1.0]] * 2 + [[0.5, 0.5]] * 2
    labels = [0, 0, 0, 1, 1, 1, 0, 1]
    probs = torch.tensor([rows], dtype=torch.float64)
    assert expected_calibration_error(probs, torch.tensor([labels])).item() == pytest.approx(0.0, abs=1e-15)


def test_ece_of_an_overconfident_construction():
    # 4 points at 0.9 with 2 right (gap 0.4), 2 points at 0.7 with 1 right (gap 0.2): 4/6 * 0.4 + 2/6 * 0.2
    rows = [[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2
    labels = [0, 0, 1, 1, 1, 0]
    probs = torch.tensor([rows, rows], dtype=torch.float64)
    ece = expected_calibration_error(probs, torch.tensor([labels, [0, 0, 0, 0, 1, 1]]))
    assert ece.tolist() == pytest.approx([4 / 6 * 0.4 + 2 / 6 * 0.2, 4 / 6 * 0.1 + 2 / 6 * 0.3], rel=1e-12)
    # a single bin pools the two confidence groups: |3/6 - (4 * 0.9 + 2 * 0.7) / 6|
    one_bin = expected_calibration_error(probs[:1], torch.tensor([labels]), bins=1)
    assert one_bin.item() == pytest.approx(abs(0.5 - 5.0 / 6), rel=1e-12)


def test_classification_metrics_summarize():
    probs = torch.tensor([[[0.9, 0.1]], [[0.4, 0.6]]])
    assert summarize(accuracy(probs, torch.tensor([[0], [0]]))) == pytest.approx((0.5, 0.5))


P = torch.full((2, 3, 2), 0.5)
L = torch.zeros(2, 3, dtype=torch.long)
BAD_CLASS_CALLS = {
    "probs 2-D": (lambda: accuracy(torch.full((2, 3), 0.5), L),
                  r"probs: expected shape num_tasks x num_points x num_classes.*got shape \(2, 3\)"),
    "labels shape": (lambda: categorical_nll(P, torch.zeros(2, 4, dtype=torch.long)),
                     r"labels: expected shape \(2, 3\).*got shape \(2, 4\)"),
    "labels trailing axis": (lambda: accuracy(P, L[..., None]), r"labels: .*drop the trailing axis"),
    "mask shape": (lambda: expected_calibration_error(P, L, torch.ones(3, 2, dtype=torch.bool)),
                   r"mask: expected a bool tensor of shape \(2, 3\)"),
    "probs do not sum to 1": (lambda: accuracy(torch.full((2, 3, 2), 0.6), L),
                              r"probs: expected probabilities in \[0, 1\] summing to 1.*6 point\(s\).*softmax"),
    "probs NaN": (lambda: categorical_nll(P.index_put((torch.tensor(1), torch.tensor(2)), torch.tensor(math.nan)), L),
                  r"probs: .*got 1 point\(s\).*task 1, point 2"),
    "probs negative": (lambda: expected_calibration_error(torch.tensor([[[1.5, -0.5]]]), torch.tensor([[0]])),
                       r"probs: expected probabilities in \[0, 1\]"),
    "logits": (lambda: categorical_nll(torch.tensor([[[2.0, -1.0]]]), torch.tensor([[0]])), r"probs: .*logits"),
    "label out of range": (lambda: accuracy(P, torch.tensor([[0, 2, 0], [0, 0, -1]])),
                           r"labels: expected class indices in 0\.\.1 .*got 2 outside.*task 0, point 1: 2"),
    "empty task": (lambda: accuracy(P, L, torch.tensor([[True] * 3, [False] * 3])), r"mask: .*task 1"),
    "bins": (lambda: expected_calibration_error(P, L, bins=0), r"bins: expected a positive int, got 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLASS_CALLS))
def test_classification_validation_messages(case):
    call, match = BAD_CLASS_CALLS[case]
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("metric", [accuracy, categorical_nll, expected_calibration_error])
def test_dtypes_are_checked(metric):
    with pytest.raises(TypeError, match=r"labels: expected an integer tensor of class indices, got torch.float32"):
        metric(P, L.float())
    with pytest.raises(TypeError, match=r"probs: expected a floating-point tensor, got torch.int64"):
        metric(L[..., None].expand(2, 3, 2), L)
