"""benchmark(): every learner through one code path, scored against independent computations."""
from __future__ import annotations

import math

import pytest
import torch

import bayesmeta as bm
from bayesmeta.evaluation import (
    FLOOR,
    accuracy,
    adapting,
    benchmark,
    categorical_nll,
    expected_calibration_error,
    mse,
    plot_benchmark,
    summarize,
)
from bayesmeta.models import HierarchicalLinearRegression


class ZeroLearner:
    """Predicts 0 everywhere, no std: a point predictor as MAML is."""

    config = {"seconds": 1.5}

    def adapt(self, support):
        class Predictor:
            def predict(self, x):
                return bm.Prediction(torch.zeros(*x.shape[:2], 1))
        return Predictor()


@pytest.fixture(scope="module")
def linear():
    family = bm.tasks.LinearGaussian(x_dim=1, seed=0)
    prior = bm.fit_prior(HierarchicalLinearRegression(x_dim=1), family.sample(100, 5, 5, seed=0), guide="exact",
                         steps=100, lr=0.05, progress=False)
    return prior, family.sample(40, 5, 20, seed=1)


def test_rows_and_values_match_independent_scores(linear):
    prior, test = linear
    table = benchmark({"exact": adapting(prior, method="exact"), "zero": ZeroLearner()}, test, shots=(1, 5),
                      progress=False)
    assert list(table.columns) == ["method", "shots", "mse", "mse_se", "nll", "nll_se", "coverage", "coverage_se",
                                   "adapt_s_per_task", "meta_train_s", "tasks"]
    assert table[["method", "shots"]].values.tolist() == [["exact", 1], ["exact", 5], ["zero", 1], ["zero", 5]]
    zero = table[table.method == "zero"]
    expected = summarize(mse(torch.zeros_like(test.query.y), test.query.y, test.query.mask))
    assert zero.mse.tolist() == pytest.approx([expected[0]] * 2) and zero.mse_se.tolist() == pytest.approx([expected[1]] * 2)
    assert zero.nll.isna().all() and zero.coverage.isna().all() and (zero.meta_train_s == 1.5).all()
    # The exact posterior's predictive, computed here by hand from the same adapt call.
    post = prior.adapt(test.support.head(5), method="exact")
    pred = post.predict(test.query.x, seed=0)
    exact5 = table[(table.method == "exact") & (table.shots == 5)].iloc[0]
    assert exact5.mse == pytest.approx(summarize(mse(pred.mean, test.query.y))[0], rel=1e-6)
    assert exact5.mse < table[(table.method == "exact") & (table.shots == 1)].iloc[0].mse
    assert 0.8 < exact5.coverage <= 1.0 and math.isfinite(exact5.nll) and exact5.adapt_s_per_task > 0


def test_the_floor_row_is_the_bayes_optimal_predictor():
    family = bm.tasks.Sinusoid()
    test = family.sample(20, 5, 30, seed=1)
    table = benchmark({"zero": ZeroLearner()}, test, shots=(2,), floor=family, progress=False)
    floor = table[table.method == FLOOR].iloc[0]
    direct = bm.tasks.sinusoid_bayes_predict(family, test.support.head(2), test.query.x, grid=(400, 400))
    assert floor.mse == pytest.approx(summarize(mse(direct.mean, test.query.y))[0], rel=1e-6)
    assert floor.mse < table[table.method == "zero"].iloc[0].mse


def test_plot_has_a_line_per_method_on_log_axes(linear):
    prior, test = linear
    table = benchmark({"exact": adapting(prior, method="exact"), "zero": ZeroLearner()}, test, shots=(1, 2, 5),
                      progress=False)
    figure = plot_benchmark(table)
    ax = figure.axes[0]
    assert ax.get_yscale() == "log" and [t.get_text() for t in ax.get_legend().get_texts()] == ["exact", "zero"]
    assert len(plot_benchmark(table, metric="coverage").axes[0].get_legend().get_texts()) == 1  # zero has no std


def test_bad_arguments_are_named(linear):
    prior, test = linear
    with pytest.raises(TypeError, match="learners: expected a non-empty dict"):
        benchmark([prior], test)
    with pytest.raises(TypeError, match=r"learners\['x'\]: expected an object with adapt"):
        benchmark({"x": 3}, test)
    with pytest.raises(ValueError, match="shots: expected ints between 1 and 5"):
        benchmark({"p": prior}, test, shots=(0, 6))
    with pytest.raises(ValueError, match="floor: expected a callable or a family"):
        benchmark({"p": prior}, test, shots=1, floor=bm.tasks.LinearGaussian(x_dim=1))
    with pytest.raises(ValueError, match="metric"):
        plot_benchmark(benchmark({"p": prior}, test, shots=1, progress=False), metric="r2")


class SoftmaxClassifier:
    """Class probabilities from fixed logits of x; ``with_probs=False`` forgets to set ``Prediction.probs``."""

    def __init__(self, with_probs=True):
        self.with_probs = with_probs

    @staticmethod
    def probs(x):
        return torch.softmax(x[..., :1] * torch.tensor([2.0, -1.0, 0.5]), dim=-1)

    def adapt(self, support):
        learner = self

        class Predictor:
            def predict(self, x):
                probs = learner.probs(x)
                return bm.Prediction(mean=probs, probs=probs if learner.with_probs else None)
        return Predictor()


@pytest.fixture
def classes():
    """6 tasks, 3 classes, 4 support labels each, 8 query labels with ragged query sets."""
    gen = torch.Generator().manual_seed(0)
    query_x = torch.randn(6, 8, 2, generator=gen)
    query_y = torch.randint(0, 3, (6, 8), generator=gen)
    query_mask = torch.arange(8) < torch.tensor([8, 5, 3, 8, 6, 2])[:, None]
    return bm.TaskSet.from_arrays(torch.randn(6, 4, 2, generator=gen), torch.randint(0, 3, (6, 4), generator=gen),
                                  query_x, query_y, query_mask=query_mask)


def test_classification_columns_match_the_metric_functions(classes):
    assert classes.query.is_classification
    table = benchmark({"softmax": SoftmaxClassifier()}, classes, shots=(1, 4), progress=False)
    assert list(table.columns) == ["method", "shots", "accuracy", "accuracy_se", "nll", "nll_se", "ece", "ece_se",
                                   "adapt_s_per_task", "meta_train_s", "tasks"]
    assert table[["method", "shots"]].values.tolist() == [["softmax", 1], ["softmax", 4]]
    probs, labels, mask = SoftmaxClassifier.probs(classes.query.x), classes.query.y, classes.query.mask
    for metric, column in [(accuracy, "accuracy"), (categorical_nll, "nll"), (expected_calibration_error, "ece")]:
        mean, se = summarize(metric(probs, labels, mask))
        assert table[column].tolist() == pytest.approx([mean] * 2, rel=1e-6), column
        assert table[f"{column}_se"].tolist() == pytest.approx([se] * 2, rel=1e-6), column
    assert (table.tasks == 6).all() and 0 < table.accuracy.iloc[0] < 1 and table.ece.iloc[0] > 0
    figure = plot_benchmark(table, metric="accuracy")
    assert figure.axes[0].get_ylabel() == "query accuracy"
    with pytest.raises(ValueError, match=r"metric: expected one of the table's scores \['nll', 'accuracy', 'ece'\]"):
        plot_benchmark(table, metric="mse")


def test_classification_without_probs_is_an_error(classes):
    with pytest.raises(ValueError, match=r"benchmark: 'forgetful' returned no class probabilities"):
        benchmark({"forgetful": SoftmaxClassifier(with_probs=False)}, classes, shots=1, progress=False)


def test_probs_on_regression_tasks_is_an_error():
    tasks = bm.tasks.LinearGaussian(x_dim=1, seed=0).sample(4, 3, 5, seed=0)
    with pytest.raises(ValueError, match=r"benchmark: 'softmax' returned class probabilities .* on regression tasks"):
        benchmark({"softmax": SoftmaxClassifier()}, tasks, shots=1, progress=False)
