"""SinusoidModel: its program, learning the family's prior, and NUTS under a known θ."""
from __future__ import annotations

import torch
from pyro import poutine

import bayesmeta as bm
from bayesmeta.guides import PerTaskGuide
from bayesmeta.models import SinusoidModel


def test_program_shapes():
    tasks = bm.tasks.Sinusoid().sample(num_tasks=5, support=3, query=4, seed=0)
    trace = poutine.trace(SinusoidModel()).get_trace(tasks)
    assert trace.nodes["phi"]["value"].shape == (5, 1, 2)
    assert trace.nodes["y"]["fn"].batch_shape == (5, 7)


def test_likelihood_mean_is_the_sine():
    model = SinusoidModel()
    phi = torch.tensor([[0.7, 0.5], [0.0, -1.0]])
    x = torch.linspace(-5, 5, 7).expand(2, 7)[..., None]
    amplitude, phase = model.amplitude_phase(phi).unbind(-1)
    expected = amplitude[:, None, None] * torch.sin(x - phase[:, None, None])
    torch.testing.assert_close(model.likelihood(phi, x).mean, expected)


def test_fit_learns_the_prior_over_amplitude_and_phase():
    family = bm.tasks.Sinusoid(noise_std=0.1)
    train = family.sample(num_tasks=500, support=10, query=10, seed=0)
    model = SinusoidModel()
    # context=True: each point's factor sees the pooled set, which a non-linear model needs (without it
    # the phase scale came out 10-14% low over two seeds; with it 4%).
    bm.fit_prior(model, train, steps=1500, batch_tasks=64, lr=2e-2, seed=0, progress=False,
                 guide_options={"context": True})
    # With 20 points per task each φ_i is pinned down, so the Gaussian ML prior is the moment match of
    # the training tasks' (log A, p). Compare with those sample moments (no sampling error left): the
    # tolerance, 4 standard errors of a mean over 500 tasks (4 * 0.8 / sqrt(500) = 0.14 and
    # 4 * 0.92 / sqrt(500) = 0.16), bounds what the amortized inference may add.
    phi = torch.stack([train.params["amplitude"].log(), train.params["phase"]], -1)
    torch.testing.assert_close(model.prior_loc.detach(), phi.mean(0), atol=0.14, rtol=0)
    relative = (model.prior_scale.detach() / phi.std(0) - 1).abs()
    assert (relative < 0.10).all(), relative


def test_nuts_posterior_covers_the_true_task_parameters():
    model = SinusoidModel()
    # The family's moments in (log A, p), and its noise: θ known, so only NUTS is under test.
    model.prior_loc = torch.tensor([0.70, 1.57])
    model.prior_scale = torch.tensor([0.80, 0.92])
    model.noise_scale = torch.tensor(0.1)
    prior = bm.LearnedPrior(model, PerTaskGuide(model, num_tasks=1), {}, {})
    test = bm.tasks.Sinusoid(noise_std=0.1).sample(num_tasks=10, support=10, query=0, seed=1)
    post = prior.adapt(test.support, method="nuts", num_samples=200, warmup_steps=200, jit_compile=True,
                       seed=0)
    truth = torch.stack([test.params["amplitude"].log(), test.params["phase"]], -1)
    # A calibrated posterior puts each true value within 4 posterior standard deviations (20 checks:
    # a chance of about 1e-3 of one failing by luck, fixed seed).
    z = (post.mean - truth) / post.covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    assert z.abs().max() < 4, z
