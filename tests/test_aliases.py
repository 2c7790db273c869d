"""The old names still work (issue 13): the renamed modules import under their old names, with the same objects and a
DeprecationWarning that names the new module; `probability_flow=` still works where it became `ode=`, and warns; so do
DDPM's old epsilon names (issue 11)."""
import importlib
import sys

import pytest
import torch

RENAMED = {"linear": "fokker_planck", "losses": "score_matching", "images": "digits_unet", "metrics": "distances",
           "quality": "image_quality"}


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_old_module_name_imports_the_new_module_and_warns(old, new):
    sys.modules.pop(f"sde_diffusion.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"sde_diffusion.{new}"):
        old_module = importlib.import_module(f"sde_diffusion.{old}")
    new_module = importlib.import_module(f"sde_diffusion.{new}")
    assert new_module.__all__
    assert all(getattr(old_module, name) is getattr(new_module, name) for name in new_module.__all__)
    exec(f"from sde_diffusion.{old} import {new_module.__all__[0]}", {})    # the `from old import name` form


def test_glue_moved_to_core_and_still_imports_from_metrics():
    from sde_diffusion.core import glue
    with pytest.warns(DeprecationWarning):
        sys.modules.pop("sde_diffusion.metrics", None)
        from sde_diffusion.metrics import glue as old_glue
    assert old_glue is glue


def test_moved_names_are_the_same_objects():
    from sde_diffusion import data, guidance, models, reverse, sde, training
    assert guidance.model_score is models.model_score and guidance.NoisyClassifier is models.NoisyClassifier
    assert training.shard is data.shard and training.data_fingerprint is data.data_fingerprint
    assert reverse.ReverseSDE is sde.ReverseSDE


def test_probability_flow_keyword_still_works_and_warns():
    from sde_diffusion.reverse import reversed_clock
    from sde_diffusion.sampling import EulerMaruyama, ReverseDiffusion
    from sde_diffusion.sde import VPSDE
    sde, score = VPSDE(), lambda x, t: -x
    x, t = torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), torch.full((3,), 0.5)
    for make_old, make_new in ((lambda: sde.reverse(score, probability_flow=True), lambda: sde.reverse(score, ode=True)),
                               (lambda: EulerMaruyama(probability_flow=True), lambda: EulerMaruyama(ode=True)),
                               (lambda: ReverseDiffusion(probability_flow=True), lambda: ReverseDiffusion(ode=True))):
        with pytest.warns(DeprecationWarning, match="use `ode`"):
            old = make_old()
        new = make_new()
        assert old.ode is True and old.probability_flow is True and new.ode is True
    with pytest.warns(DeprecationWarning, match="use `ode`"):
        drift_old, _ = reversed_clock(sde, score, probability_flow=True)
    torch.testing.assert_close(drift_old(x, t), reversed_clock(sde, score, ode=True)[0](x, t), rtol=0, atol=0)
    torch.testing.assert_close(sde.reverse(score, True).drift(x, t), sde.reverse(score, ode=True).drift(x, t), rtol=0, atol=0)


def test_ddpm_noise_names_old_names_still_work_and_warn():
    "eps_from_score / score_from_eps / ddpm_ancestral_step(eps_pred=) became noise names (issue 11): same numbers, a warning."
    from sde_diffusion import ddpm
    from sde_diffusion.ddpm import eps_from_score, score_from_eps     # importable, though not in __all__ (not on the API page)
    from sde_diffusion.sde import VPSDE
    assert "eps_from_score" not in ddpm.__all__ and "noise_from_score" in ddpm.__all__
    g = torch.Generator().manual_seed(0)
    s, x, z, sigma = (torch.randn(5, 3, generator=g) for _ in range(4))
    sigma = sigma.abs() + 0.1
    with pytest.warns(DeprecationWarning, match="use `noise_from_score`"):
        old = eps_from_score(s, sigma[:, 0])
    assert torch.equal(old, ddpm.noise_from_score(s, sigma[:, 0]))
    with pytest.warns(DeprecationWarning, match="use `score_from_noise`"):
        back = score_from_eps(old, sigma[:, 0])
    assert torch.equal(back, ddpm.score_from_noise(old, sigma[:, 0]))
    vp = VPSDE()
    new = ddpm.ddpm_ancestral_step(x, 7, old, z, schedule=vp)
    with pytest.warns(DeprecationWarning, match="use `noise_pred`"):
        assert torch.equal(ddpm.ddpm_ancestral_step(x, 7, eps_pred=old, noise=z, schedule=vp), new)
    with pytest.raises(TypeError, match="give only `noise_pred`"):
        ddpm.ddpm_ancestral_step(x, 7, old, z, eps_pred=old, schedule=vp)
