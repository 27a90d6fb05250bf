"""fmlib's conditional paths against the two reference libraries, on identical inputs (x_0, x_1, t).

* torchcfm (Tong et al.): ``TargetConditionalFlowMatcher(sigma)`` is Lipman et al.'s path with sigma_t = 1 - (1 -
  sigma) t, ``ConditionalFlowMatcher(0)`` the linear interpolation; ``sample_xt(x0, x1, t, epsilon=x0)`` puts the noise
  point x_0 where fmlib's flow takes it, and ``compute_conditional_flow`` is the regression target.
* flow_matching (Lipman et al. 2024): ``AffineProbPath(scheduler)`` with x_t = sigma_t x_0 + alpha_t x_1 and target
  d sigma_t x_0 + d alpha_t x_1; ``CondOTScheduler`` is LinearPath(0), a scheduler with sigma_t = 1 - (1 - sigma_min) t
  is LinearPath(sigma_min), and ``VPScheduler`` is VPDiffusionPath.

Where the definitions differ: both VP paths are singular at t = 1 (sigma_1 = 0 and an infinite d sigma_t / dt);
fmlib's ``VPDiffusionPath.sample`` therefore draws t from [0, 1 - 1e-3) (``t_max``), while flow_matching leaves the
range to its user. The comparison below runs on [0, 0.999). The libraries are test-only dependencies (``.ci/run``
installs torchcfm without its training dependencies; the modules compared need only torch, numpy and POT).
"""

import pytest
import torch

from fmlib import LinearPath, VPDiffusionPath

D64 = torch.float64


def _inputs(n=500, d=3, t_max=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randn(n, d, generator=g, dtype=D64)
    x_1 = 3 * torch.randn(n, d, generator=g, dtype=D64)
    t = t_max * torch.rand(n, generator=g, dtype=D64)
    return x_0, x_1, t


def _fmlib(path, x_0, x_1, t):
    return path.flow(t, x_0, x_1), path.target(t, x_0, x_1)


@pytest.mark.parametrize("sigma_min", [0.0, 0.01, 0.2])
def test_linear_path_matches_torchcfm_target_matcher(sigma_min):
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    x_0, x_1, t = _inputs()
    matcher = cfm.TargetConditionalFlowMatcher(sigma=sigma_min)
    x_t = matcher.sample_xt(x_0, x_1, t, epsilon=x_0)
    u_t = matcher.compute_conditional_flow(x_0, x_1, t, x_t)
    mine_x, mine_u = _fmlib(LinearPath(sigma_min), x_0, x_1, t)
    torch.testing.assert_close(mine_x, x_t, rtol=0, atol=1e-12)
    # torchcfm writes the target as u_t(x_t | x_1) = (x_1 - (1 - sigma) x_t) / (1 - (1 - sigma) t), fmlib on the path
    # as x_1 - (1 - sigma) x_0: equal up to the rounding of the division
    torch.testing.assert_close(mine_u, u_t, rtol=1e-9, atol=1e-9)
    # and fmlib's conditional vector field is torchcfm's formula itself
    torch.testing.assert_close(LinearPath(sigma_min).conditional_vector_field(t, x_t, x_1), u_t, rtol=0, atol=1e-12)


def test_linear_path_without_sigma_matches_torchcfm_cfm():
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    x_0, x_1, t = _inputs()
    matcher = cfm.ConditionalFlowMatcher(sigma=0.0)
    x_t = matcher.sample_xt(x_0, x_1, t, epsilon=torch.zeros_like(x_0))  # sigma = 0: no extra noise
    u_t = matcher.compute_conditional_flow(x_0, x_1, t, x_t)
    mine_x, mine_u = _fmlib(LinearPath(0.0), x_0, x_1, t)
    torch.testing.assert_close(mine_x, x_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(mine_u, u_t, rtol=0, atol=1e-12)


def _sigma_min_scheduler(sigma_min):
    scheduler = pytest.importorskip("flow_matching.path.scheduler")

    class SigmaMinOT(scheduler.Scheduler):
        """alpha_t = t, sigma_t = 1 - (1 - sigma_min) t (Lipman et al. 2023, eq. 20)."""

        def __call__(self, t):
            return scheduler.SchedulerOutput(alpha_t=t, sigma_t=1 - (1 - sigma_min) * t, d_alpha_t=torch.ones_like(t),
                                             d_sigma_t=-(1 - sigma_min) * torch.ones_like(t))

        def snr_inverse(self, snr):  # not needed here
            raise NotImplementedError

    return SigmaMinOT()


@pytest.mark.parametrize("sigma_min", [0.0, 0.01, 0.2])
def test_linear_path_matches_flow_matching_affine_path(sigma_min):
    path_mod = pytest.importorskip("flow_matching.path")
    sched = pytest.importorskip("flow_matching.path.scheduler")
    x_0, x_1, t = _inputs()
    schedulers = [_sigma_min_scheduler(sigma_min)] + ([sched.CondOTScheduler()] if sigma_min == 0 else [])
    mine_x, mine_u = _fmlib(LinearPath(sigma_min), x_0, x_1, t)
    for s in schedulers:
        ref = path_mod.AffineProbPath(s).sample(x_0=x_0, x_1=x_1, t=t)
        torch.testing.assert_close(mine_x, ref.x_t, rtol=0, atol=1e-12)
        torch.testing.assert_close(mine_u, ref.dx_t, rtol=0, atol=1e-12)


def test_vp_path_matches_flow_matching_vp_scheduler():
    path_mod = pytest.importorskip("flow_matching.path")
    sched = pytest.importorskip("flow_matching.path.scheduler")
    x_0, x_1, t = _inputs(t_max=VPDiffusionPath.t_max)
    for beta_min, beta_max in ((0.1, 20.0), (0.5, 5.0)):
        ref = path_mod.AffineProbPath(sched.VPScheduler(beta_min, beta_max)).sample(x_0=x_0, x_1=x_1, t=t)
        mine_x, mine_u = _fmlib(VPDiffusionPath(beta_min, beta_max), x_0, x_1, t)
        torch.testing.assert_close(mine_x, ref.x_t, rtol=1e-10, atol=1e-10)
        # the target has sigma'_t, which grows like 1 / sigma_t near t = 1: compare relatively
        torch.testing.assert_close(mine_u, ref.dx_t, rtol=1e-8, atol=1e-8)
