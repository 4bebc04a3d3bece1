import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import (
    MeanFieldNormal,
    MeanFieldStudentT,
    StudentT,
)
from torch_blue_pyro.vi.utils import UnsupportedDistributionError, use_norm_constants

torch_blue_vi = pytest.importorskip("torch_blue.vi")


def test_alias() -> None:
    assert StudentT is MeanFieldStudentT


@pytest.mark.parametrize("constants", [False, True])
def test_log_prob_matches_torch_blue_and_torch(constants: bool) -> None:
    sample = torch.randn(5, 4, dtype=torch.float64)
    mean = torch.randn(5, 4, dtype=torch.float64)
    log_scale = torch.randn(5, 4, dtype=torch.float64)
    theirs_dist = torch_blue_vi.distributions.MeanFieldStudentT(degrees_of_freedom=3.0)
    their_utils = pytest.importorskip("torch_blue.vi.utils")
    try:
        use_norm_constants(constants)
        their_utils.use_norm_constants(constants)
        ours = StudentT(degrees_of_freedom=3.0).log_prob(sample, (mean, log_scale))
        theirs = theirs_dist.log_prob(sample, (mean, log_scale))
    finally:
        use_norm_constants(False)
        their_utils.use_norm_constants(False)
    # torch_blue computes its constant in float32 (df is a float32 tensor).
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-7)
    exact = torch.distributions.StudentT(3.0, mean, log_scale.exp()).log_prob(sample)
    if not constants:
        exact = exact + StudentT(degrees_of_freedom=3.0)._log_norm()
    torch.testing.assert_close(ours, exact)


@pytest.mark.parametrize("constants", [False, True])
def test_closed_form_log_q_equals_scoring_the_sample(constants: bool) -> None:
    mean = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_scale = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    dist_ = StudentT(degrees_of_freedom=5.0)
    try:
        use_norm_constants(constants)
        samples, log_q = dist_.rsample_with_log_prob((mean, log_scale), 6, True)
        scored = dist_.log_prob(samples, (mean, log_scale)).flatten(1).sum(1)
    finally:
        use_norm_constants(False)
    assert log_q is not None
    torch.testing.assert_close(log_q, scored)
    # Same total derivative: none for the mean, -1 per element for the log-scale.
    closed = torch.autograd.grad(log_q.sum(), (mean, log_scale), allow_unused=True)
    through = torch.autograd.grad(scored.sum(), (mean, log_scale))
    closed_mean = torch.zeros_like(mean) if closed[0] is None else closed[0]
    torch.testing.assert_close(closed_mean, through[0])
    torch.testing.assert_close(closed[1], through[1])
    torch.testing.assert_close(closed[1], torch.full_like(log_scale, -6.0))


def test_samples_have_the_moments_of_student_t() -> None:
    mean, log_scale = torch.full((2,), 1.5), torch.full((2,), math.log(0.5))
    samples, _ = StudentT(degrees_of_freedom=6.0).rsample_with_log_prob(
        (mean, log_scale), 40000, False
    )
    torch.testing.assert_close(samples.median(0).values, mean, atol=0.02, rtol=0)
    # Var = s^2 nu / (nu - 2).
    torch.testing.assert_close(
        samples.var(0), torch.full((2,), 0.25 * 6 / 4), atol=0.03, rtol=0
    )
    one = StudentT().sample((mean, log_scale))
    assert one.shape == (2,) and StudentT().sample(mean, log_scale).shape == (2,)


def test_as_variational_distribution_of_a_layer(recorder) -> None:
    """torch_blue (0.9 and 1.1) crashes here: its sampling is vmap'ed."""
    layer = vi.VILinear(4, 3, variational_distribution=StudentT(scale=0.3))
    x, target = torch.randn(8, 4), torch.randn(8, 3)
    with recorder:
        output = layer(x, samples=5)
    dist_ = StudentT(scale=0.3)
    expected = sum(
        dist_.variational_log_prob(
            recorder.values[name],
            (getattr(layer, f"_{name}_mean"), getattr(layer, f"_{name}_log_scale")),
        )
        .flatten(1)
        .sum(1)
        for name in ("weight", "bias")
    )
    torch.testing.assert_close(output.log_probs[:, 1], expected)
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=100)
    loss(output, target).backward()
    assert layer._weight_log_scale.grad is not None

    theirs = torch_blue_vi.VILinear(
        4, 3, variational_distribution=torch_blue_vi.distributions.MeanFieldStudentT()
    )
    with pytest.raises(RuntimeError, match="vmap"):
        theirs(x, samples=5)


def test_in_a_module_run_per_sample() -> None:
    class SingleSampleLinear(vi.VIModule):
        def __init__(self) -> None:
            super().__init__(
                {"weight": (3, 4), "bias": (3,)},
                variational_distribution=StudentT(),
            )

        def forward(self, x):
            return F.linear(x, self.weight, self.bias)

    output = SingleSampleLinear()(torch.randn(6, 4), samples=4)
    assert output.shape == (4, 6, 3) and torch.isfinite(output.log_probs).all()


def test_initial_scale_of_both_spellings() -> None:
    for dist_ in (StudentT(scale=0.5), StudentT(0.0, 0.5), StudentT(initial_scale=0.5)):
        assert dist_._default_variational_parameters == (0.0, math.log(0.5))
    layer = vi.VILinear(
        9, 2, variational_distribution=StudentT(initial_scale=0.5, degrees_of_freedom=3)
    )
    expected = math.log(0.5) + math.log(1 / 3 + 1e-5)
    torch.testing.assert_close(
        layer._weight_log_scale.detach(), torch.full((2, 9), expected)
    )
    student = layer.variational_distribution["weight"]
    assert float(student.degrees_of_freedom) == 3.0
    student.degrees_of_freedom = torch.tensor(7.0)
    assert student._log_norm() == StudentT(degrees_of_freedom=7.0)._log_norm()
    with pytest.raises(ValueError, match="degrees_of_freedom must be a positive"):
        student.degrees_of_freedom = -1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 0.0}, "scale must be a positive finite number"),
        ({"initial_scale": -1.0}, "initial_scale must be a positive finite number"),
        ({"degrees_of_freedom": 0.0}, "degrees_of_freedom must be a positive"),
        ({"mean": float("nan")}, "mean must be a finite number"),
        ({"scale": 2.0, "initial_scale": 1.0}, "not both"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StudentT(**kwargs)


def test_only_a_variational_distribution() -> None:
    with pytest.raises(UnsupportedDistributionError, match="MeanFieldStudentT cannot"):
        vi.VILinear(4, 3, prior=StudentT())
    with pytest.raises(UnsupportedDistributionError, match="MeanFieldStudentT cannot"):
        vi.KullbackLeiblerLoss(StudentT())


def test_guide_and_svi() -> None:
    net = vi.VILinear(4, 3, variational_distribution=StudentT(degrees_of_freedom=3.0))
    trace = poutine.trace(net.guide).get_trace()
    guide_site = trace.nodes["weight"]["fn"]
    assert guide_site.event_shape == (3, 4) and guide_site.has_rsample
    assert isinstance(guide_site.base_dist, dist.StudentT)

    def model(x, y=None):
        out = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)

    before = net._weight_log_scale.detach().clone()
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(torch.randn(16, 4), torch.randn(16, 3)))
    assert not torch.equal(before, net._weight_log_scale)
