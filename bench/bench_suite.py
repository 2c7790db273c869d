#!/usr/bin/env python
"""A suite of Gaussian-mixture distributions and a benchmark of every sampler over it (issue 10, item 1).

Every distribution is a `sde_diffusion.toy.GaussianMixture`, so each sampler is driven by an *exact* score and every
error is the sampler's own. The suite: the ring of 8 Gaussians, the checkerboard (as a mixture of small Gaussians on
its squares) and mixtures generated from seeds in dimensions 2, 8 and 64 (2-12 components, weights down to 1 %,
condition numbers up to 100, component scales 0.02 to 5, modes out to 8 data std), each normalized to zero mean and
unit overall data std (mean coordinate variance 1) so that one VP SDE fits all.

For each distribution, sampler and NFE budget it records over several seeds: the exact-log-density gap |dlogp| and
the sliced W2 distance, each against its noise floor, and for deterministic samplers the paired error to the converged
probability-flow map of the same prior draw. Then it ranks the samplers, computes the win rates of our best against
each peer and writes `SUITE.md` and `suite.png` into `--out`.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_suite.py --quick   # smoke run (< 1 min), into a temporary folder
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_suite.py           # full run into bench/ (~20 min of CPU; the
                                                                      # wall time grows with the machine's load)

`--eps` moves the end time of ours, torchdiffeq rk4, the exact flow map and the eps limit together (default 1e-3;
bench/SUITE_EPS.md compares 1e-3, 1e-4 and 1e-5). Without `--eps`, `sample`'s default runs to its own end time
(`sampling.recommended_eps`: 1e-4 from 49 steps, 1e-5 from 99), measured against the same exact map to 1e-3; with
`--eps` (1e-3 too) it runs to that eps like the rest of ours (bench/bench_eps.py compares the two). Our predictors are discovered from
`sde_diffusion.sampling.PREDICTORS` at run time (new ones are picked up; an
expected one that is missing is named in the report). Deterministic given `--seed` (wall times aside).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import re
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_samplers as bs  # noqa: E402  (also puts the repository root on sys.path)
from sde_diffusion import distances as metrics, sampling  # noqa: E402   (sde_diffusion.metrics before issue 13)
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians  # noqa: E402

ROOT = bs.ROOT
EPS = bs.EPS               # last time of every continuous-time sampler (1e-3); ours and rk4 then take Tweedie's step
DEFAULT_EPS = EPS          # `--eps` changes EPS here and in bench_samplers (ours, rk4, the exact map, the eps limit)
OWN_EPS = True             # `sample`'s default runs to its own end time (`sampling.recommended_eps`); `--eps` clears it
N_PROJ = bs.N_PROJ         # directions of the sliced W2
_gen = bs._gen


def set_eps(eps: float) -> float:
    """Set the end time eps of every sampler that integrates to eps (ours, torchdiffeq rk4), of the exact flow map and
    of the eps limit: here and in bench_samplers, whose functions read `EPS` at call time. diffusers' schedulers keep
    their own discretization."""
    global EPS
    eps = float(eps)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, T) = (0, 1), got {eps!r}")
    EPS = bs.EPS = eps
    return eps


def _eps_pow(eps: float | None = None):
    "The exponent n when eps = 10^n exactly (up to rounding), else None."
    eps = EPS if eps is None else eps
    e = round(math.log10(eps))
    return e if abs(eps - 10.0**e) <= 1e-9 * eps else None


def eps_tex(eps: float | None = None) -> str:
    "eps as the report writes it: 10⁻³ for the default 1e-3, any power of ten as 10⁻ⁿ, else as %g."
    eps = EPS if eps is None else eps
    e = _eps_pow(eps)
    return f"{eps:g}" if e is None else "10" + str(e).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def eps_plain(eps: float | None = None) -> str:
    "eps in ASCII for the figure: 1e-3 for the default, 1e-n for powers of ten, else as %g."
    eps = EPS if eps is None else eps
    e = _eps_pow(eps)
    return f"{eps:g}" if e is None else f"1e{e}"

NFES = (5, 6, 7, 8, 10, 15, 20, 25, 50, 100, 250)   # 20 and 50: where `recommended_sampler` changes sampler
                                                #   (sampling.AUTO_SWITCH_STEPS + 1)
QUICK_NFES = (5, 10, 25)
SEEDS = 3
SUITE_SEED = 20240610      # the generated mixtures depend on this and on (dimension, index) only
CHECKER_M = 2              # Gaussians per side of each checkerboard square (8 squares: 8 m^2 components)

# sample sizes per run (per dimension): chosen so that the full run fits in ~30 min on this machine (see SUITE.md)
N_FULL = {2: 2000, 8: 1500, 64: 1000}
N_QUICK = {2: 600, 8: 600, 64: 400}
# profiles of the generated mixtures, per dimension: which hard feature each one has (see `suite_mixture`)
PROFILES = {2: (("sharp",), ("far",), ("broad",), ("aniso",), ("sharp", "far"), ("aniso", "broad")),
            8: (("sharp",), ("far",), ("broad",), ("aniso",)),
            64: (("aniso", "far"), ("sharp", "broad"))}
QUICK_SUITE = ("ring", "checkerboard", "gmm8d-3")

# our predictors the suite expects (display name, how to recognise its key in PREDICTORS); any other key is run too
EXPECTED = (("euler_maruyama", "EM", lambda k: k == "euler_maruyama"),
            ("reverse_diffusion", "reverse-diffusion", lambda k: k == "reverse_diffusion"),
            ("ancestral", "ancestral", lambda k: k == "ancestral"),
            ("ddim", "DDIM", lambda k: k == "ddim"),
            ("heun", "Heun", lambda k: k == "heun"),
            ("dpm_solver_2m", "DPM-Solver++(2M)", lambda k: k == "dpm_solver_2m"),
            ("dpm_solver_3m", "DPM-Solver++(3M)", lambda k: "3m" in k.lower()),
            ("unipc", "UniPC", lambda k: "unipc" in k.lower()),
            ("ipndm", "iPNDM", lambda k: "pndm" in k.lower()))
SHORT = {"uniform": "uni", "logsnr": "logsnr", "edm": "edm", "quadratic": "quad", "cubic": "cubic", "threehalves": "3/2"}
# grids run only for some predictors (keys of sampling.PREDICTORS), not for every one: the time-3/2 grid (UniPC, the
# default's sampler from sampling.AUTO_THREEHALVES_MIN_DIM numbers per sample) keeps the suite's run time
GRID_ONLY_FOR = {"threehalves": ("unipc",)}
# non-default settings run as well: (label, key in PREDICTORS, constructor arguments, grids)
VARIANTS = (("UniPC-3", "unipc", {"order": 3}, ("logsnr", "edm", "quadratic", "threehalves")),)
DEFAULT_NAME = "ours default"   # `sample` with no predictor and no spacing (`sampling.recommended_sampler`)
UNHINTED_NAME = "ours default, no data_std"   # at --scale != 1: the default as called without the data's scale
QUAD64_NAME = "ours default (time-quadratic at 64-D)"   # `--quad64-default`: the default with the time-3/2 rule off
QUAD64_DEFAULT = False     # (`sampling.AUTO_THREEHALVES_MIN_DIM` out of reach): UniPC-2 on the time-quadratic grid
DATA_SCALE = 1.0           # `--scale`: every distribution's data std (the default is told it: `sample(..., data_std=)`)


# ----------------------------------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    name: str
    kind: str                    # "ring" | "checkerboard" | "random"
    gm: GaussianMixture          # float64, zero mean, mean coordinate variance 1
    tags: tuple = ()
    props: dict = field(default_factory=dict)

    @property
    def D(self):
        return self.gm.D


def normalize(gm: GaussianMixture) -> tuple[GaussianMixture, float]:
    "Centre the mixture and scale it so that its mean coordinate variance trace(Cov)/D is 1; returns it and the scale."
    gm = gm.to(dtype=torch.float64)
    m, C = gm.mean(), gm.covariance()
    c = math.sqrt(C.trace().item() / gm.D)
    return GaussianMixture(gm.weights, (gm.means - m) / c, gm.covs / c**2), c


def ring_dist() -> Dist:
    gm, c = normalize(ring_of_gaussians(dtype=torch.float64))
    return Dist("ring", "ring", gm, (), dict(note=f"ring_of_gaussians() (radius 2, std 0.25) / {c:.4f}"))


def checkerboard_dist(m: int = CHECKER_M) -> Dist:
    """`toy.sample_checkerboard` (uniform on the 8 dark squares of a 4x4 board) has no exact mixture form: each unit
    square gets an m x m grid of isotropic Gaussians of std 1/(m sqrt 12), which matches the square's mean and
    covariance exactly (grid variance (m^2 - 1)/(12 m^2) plus 1/(12 m^2) = 1/12 per coordinate)."""
    cells = []
    for c in (-2, -1, 0, 1):                        # column [c, c+1): dark rows {0, -2} (c even) or {1, -1} (c odd)
        for r in ((0, -2) if c % 2 == 0 else (1, -1)):
            cells.append((c, r))
    off = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    means = torch.cat([torch.cartesian_prod(c + off, r + off) for c, r in cells])
    K = means.shape[0]
    gm = GaussianMixture(torch.ones(K, dtype=torch.float64), means,
                         torch.full((K,), 1.0 / (12 * m * m), dtype=torch.float64))
    gm, c = normalize(gm)
    return Dist("checkerboard", "checkerboard", gm, (),
                dict(note=f"8 squares x {m}x{m} Gaussians of std {1 / (m * math.sqrt(12)):.3f} (board units) / {c:.4f}"))


def _rotation(D, g):
    Q, R = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))[None, :]


def _cov(D, lo_std, hi_std, g):
    "Random rotation of axis stds log-uniform in [lo, hi], both ends attained (D >= 2): condition number (hi/lo)^2."
    u = torch.rand(D, generator=g, dtype=torch.float64)
    if D >= 2:
        u[0], u[1] = 0.0, 1.0
    stds = lo_std * (hi_std / lo_std) ** u
    Q = _rotation(D, g)
    return Q @ torch.diag(stds**2) @ Q.T


def _logu(lo, hi, g):
    return lo * (hi / lo) ** torch.rand((), generator=g, dtype=torch.float64).item()


def suite_mixture(D: int, idx: int, tags=(), seed: int = SUITE_SEED) -> Dist:
    """A generated mixture in normalized units. K in 2..12 (2..6 in 64-D); weights Dirichlet(1) floored at 1 %; 'bulk'
    components with means at uniformly random directions and distances in [0.5, 3] and axis stds log-uniform around a
    scale in [0.1, 0.6] with condition number <= 10, all then scaled by one factor a (means by a, covariances by a^2)
    chosen by bisection so that the centred mixture has mean coordinate variance exactly 1. Tags add the hard features,
    fixed in normalized units (not scaled): 'sharp': a third of the other components have smallest axis std 0.02
    (condition <= 10); 'far': a 1 % component of std 0.3 at distance 8 from the origin; 'broad': a 2 % isotropic
    component of std 5 centred at 0; 'aniso': every bulk component has condition number in [10, 100], the last one
    exactly 100."""
    g = torch.Generator().manual_seed(seed + 1000 * D + idx)
    K = int(torch.randint(2, 7 if D >= 64 else 13, (), generator=g))
    w = -torch.rand(K, generator=g, dtype=torch.float64).log()
    w = w / w.sum()
    for _ in range(20):                              # floor at 1 % (renormalizing moves it a little: iterate)
        w = w.clamp_min(0.01)
        w = w / w.sum()
    w = w.clamp_min(0.01)
    w = w / w.sum()
    dirs = torch.randn(K, D, generator=g, dtype=torch.float64)
    means = dirs / dirs.norm(dim=1, keepdim=True) * (0.5 + 2.5 * torch.rand(K, 1, generator=g, dtype=torch.float64))
    covs = torch.empty(K, D, D, dtype=torch.float64)
    fixed_mean = torch.zeros(K, dtype=torch.bool)
    fixed_cov = torch.zeros(K, dtype=torch.bool)
    aniso = "aniso" in tags
    for k in range(K):
        s = _logu(0.1, 0.6, g)
        cond = (100.0 if k == K - 1 else _logu(10.0, 100.0, g)) if aniso else _logu(1.0, 10.0, g)
        covs[k] = _cov(D, s / cond**0.25, s * cond**0.25, g)
    special = 0
    if "far" in tags:                                # component `special`: 1 %, std 0.3, at distance 8
        k = special
        d = torch.randn(D, generator=g, dtype=torch.float64)
        means[k] = 8.0 * d / d.norm()
        covs[k] = 0.09 * torch.eye(D, dtype=torch.float64)
        w[k] = 0.01
        fixed_mean[k] = fixed_cov[k] = True
        special += 1
    if "broad" in tags and special < K:              # 2 %, isotropic std 5, at the origin
        k = special
        means[k] = 0.0
        covs[k] = 25.0 * torch.eye(D, dtype=torch.float64)
        w[k] = 0.02
        fixed_mean[k] = fixed_cov[k] = True
        special += 1
    if "sharp" in tags:                              # a third of the remaining components: smallest axis std 0.02
        n_sharp = max(1, (K - special) // 3)
        for k in range(special, min(K, special + n_sharp)):
            cond = _logu(1.0, 10.0, g)
            covs[k] = _cov(D, 0.02, 0.02 * cond**0.5, g)
            fixed_cov[k] = True
    # the fixed weights (1 %, 2 %) stay; the others share the rest in their drawn proportions
    fw = torch.zeros(K, dtype=torch.bool)
    fw[:special] = True
    w[~fw] = w[~fw] / w[~fw].sum() * (1 - w[fw].sum())

    def build(a):
        mu = torch.where(fixed_mean[:, None], means, a * means)
        cv = torch.where(fixed_cov[:, None, None], covs, a * a * covs)
        return GaussianMixture(w, mu, cv)

    def var(a):
        return build(a).covariance().trace().item() / D

    lo, hi = 0.0, 1.0
    while var(hi) < 1:
        hi *= 2
    if var(1e-9) > 1:
        raise ValueError(f"suite_mixture(D={D}, idx={idx}, {tags}): the fixed components alone exceed unit variance")
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if var(mid) < 1 else (lo, mid)
    gm = build(0.5 * (lo + hi))
    gm = GaussianMixture(gm.weights, gm.means - gm.mean(), gm.covs)      # centre (keeps the covariance)
    name = f"gmm{D}d-{idx}"
    return Dist(name, "random", gm, tuple(tags))


def describe(d: Dist) -> dict:
    "The properties the issue asks the suite to cover, measured on the normalized mixture."
    gm = d.gm
    ev = torch.linalg.eigvalsh(gm.covs)                       # (K, D)
    stds = ev.clamp_min(0).sqrt()
    tot = gm.covariance()
    return dict(D=gm.D, K=gm.K, w_min=gm.weights.min().item(), w_max=gm.weights.max().item(),
                cond_max=(ev[:, -1] / ev[:, 0]).max().item(), std_min=stds.min().item(), std_max=stds.max().item(),
                dist_max=gm.means.norm(dim=1).max().item(),
                mean_var=tot.trace().item() / gm.D, mean_norm=gm.mean().norm().item())


# ----------------------------------------------------------------------------------------------------------------------
# Families outside the generator (bench/bench_families.py): other shapes than `suite_mixture` draws, each an exact mixture
# ----------------------------------------------------------------------------------------------------------------------
def _fam_moons() -> GaussianMixture:
    "scikit-learn's two moons (`make_moons(noise=0.1)`) as 2 x 24 isotropic Gaussians of std 0.1 along the two arcs."
    th = torch.linspace(0, math.pi, 24, dtype=torch.float64)
    upper = torch.stack([th.cos(), th.sin()], 1)
    lower = torch.stack([1 - th.cos(), 0.5 - th.sin()], 1)
    means = torch.cat([upper, lower])
    return GaussianMixture(torch.ones(48, dtype=torch.float64), means, torch.full((48,), 0.01, dtype=torch.float64))


def _fam_spiral() -> GaussianMixture:
    """A 2-D Swiss roll: 60 isotropic Gaussians of std 0.5 at (θ cos θ, θ sin θ), θ evenly spaced in [1.5π, 4.5π],
    weights proportional to θ, about the arc length each stands for (the outer turns carry more mass)."""
    th = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 60, dtype=torch.float64)
    means = torch.stack([th * th.cos(), th * th.sin()], 1)
    return GaussianMixture(th.clone(), means, torch.full((60,), 0.25, dtype=torch.float64))


def _fam_grid25() -> GaussianMixture:
    "The '25 Gaussians' of the GAN literature: a 5 x 5 lattice of spacing 2 with std 0.05 (0.018 data std)."
    ax = torch.arange(-4.0, 4.1, 2.0, dtype=torch.float64)
    means = torch.cartesian_prod(ax, ax)
    return GaussianMixture(torch.ones(25, dtype=torch.float64), means, torch.full((25,), 0.0025, dtype=torch.float64))


def _fam_needle8() -> GaussianMixture:
    """8-D: a needle in a haystack. 99 % in N(0, I), 1 % in an isotropic Gaussian of std 0.05 at distance 1.5 from the
    origin, inside the bulk (the score must resolve a sharp mode that sits where the bulk has density)."""
    g = torch.Generator().manual_seed(SUITE_SEED + 8)
    d = torch.randn(8, generator=g, dtype=torch.float64)
    means = torch.stack([torch.zeros(8, dtype=torch.float64), 1.5 * d / d.norm()])
    return GaussianMixture(torch.tensor([0.99, 0.01], dtype=torch.float64), means,
                           torch.tensor([1.0, 0.0025], dtype=torch.float64))


def _fam_lowrank16() -> GaussianMixture:
    """16-D, data near a union of planes: 6 components, each of rank-2 spread (axis stds 0.3 and 0.6 in a random plane)
    plus isotropic std 0.02 off it, means at random directions and distances 1 to 2, Dirichlet(1) weights."""
    g = torch.Generator().manual_seed(SUITE_SEED + 16)
    K, D = 6, 16
    w = -torch.rand(K, generator=g, dtype=torch.float64).log()
    dirs = torch.randn(K, D, generator=g, dtype=torch.float64)
    means = dirs / dirs.norm(dim=1, keepdim=True) * (1 + torch.rand(K, 1, generator=g, dtype=torch.float64))
    covs = torch.empty(K, D, D, dtype=torch.float64)
    for k in range(K):
        U = _rotation(D, g)[:, :2]
        covs[k] = U @ torch.diag(torch.tensor([0.09, 0.36], dtype=torch.float64)) @ U.T + 0.0004 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture(w, means, covs)


def _powerlaw(D: int) -> GaussianMixture:
    "D-D, one Gaussian with axis variances proportional to k^-2 (k = 1..D) in a random rotation (seeded by D)."
    g = torch.Generator().manual_seed(SUITE_SEED + D)
    k = torch.arange(1, D + 1, dtype=torch.float64)
    Q = _rotation(D, g)
    cov = Q @ torch.diag(k**-2.0) @ Q.T
    return GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, D, dtype=torch.float64), cov[None])


def _fam_powerlaw64() -> GaussianMixture:
    """64-D, one Gaussian with a natural-image-like spectrum: axis variances proportional to k^-2 (k = 1..64, condition
    number 4096) in a random rotation."""
    return _powerlaw(64)


def _fam_digits64() -> GaussianMixture:
    """64-D, scikit-learn's 8x8 digits (shipped with the package): one Gaussian per class with that class's mean and
    covariance (+ 0.5² I in pixel units, so that the always-blank pixels have a spread too), weighted by class size."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X, y = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    ws, means, covs = [], [], []
    for c in range(10):
        Xc = X[y == c]
        ws.append(float(len(Xc)))
        means.append(Xc.mean(0))
        covs.append(torch.cov(Xc.T) + 0.25 * torch.eye(64, dtype=torch.float64))
    return GaussianMixture(torch.tensor(ws, dtype=torch.float64), torch.stack(means), torch.stack(covs))


FAMILIES = {"moons": _fam_moons, "spiral": _fam_spiral, "grid25": _fam_grid25, "needle8d": _fam_needle8,
            "lowrank16d": _fam_lowrank16, "powerlaw64d": _fam_powerlaw64, "digits64d": _fam_digits64}


SPEC_SEED = 20261205        # the spec mixtures depend on this and on (dimension, index) only


def spec_mixture(D: int, idx: int, seed: int = SPEC_SEED) -> Dist:
    """A mixture drawn straight from issue 10's wording, by a second generator that shares nothing with
    `suite_mixture` (no profiles, no bulk): K in 2..12 (2..6 in 64-D), Dirichlet(1) weights floored at 1 %, each
    component with its own scale log-uniform in [0.02, 5] and condition number log-uniform in [1, 100] (axis stds
    scale x cond^(±1/4), random rotation), its mean in a random direction at a distance uniform in [0, 8]. Normalized
    (centred, mean coordinate variance 1); drawn again (the next draw of the same generator) until every axis std lies in
    [0.02, 5] and every mean within 8 of the origin, in those units."""
    g = torch.Generator().manual_seed(seed + 1000 * D + idx)
    for _ in range(10_000):
        K = int(torch.randint(2, 7 if D >= 64 else 13, (), generator=g))
        w = -torch.rand(K, generator=g, dtype=torch.float64).log()
        w = w / w.sum()
        for _ in range(20):
            w = w.clamp_min(0.01)
            w = w / w.sum()
        covs = torch.empty(K, D, D, dtype=torch.float64)
        for k in range(K):
            sc, cond = _logu(0.02, 5.0, g), _logu(1.0, 100.0, g)
            covs[k] = _cov(D, sc / cond**0.25, sc * cond**0.25, g)
        dirs = torch.randn(K, D, generator=g, dtype=torch.float64)
        means = dirs / dirs.norm(dim=1, keepdim=True) * 8.0 * torch.rand(K, 1, generator=g, dtype=torch.float64)
        gm, _ = normalize(GaussianMixture(w, means, covs))
        stds = torch.linalg.eigvalsh(gm.covs).clamp_min(0).sqrt()
        if stds.min() >= 0.02 and stds.max() <= 5.0 and gm.means.norm(dim=1).max() <= 8.0:
            return Dist(f"spec{D}d-{idx}", "spec", gm, ())
    raise RuntimeError(f"spec_mixture(D={D}, idx={idx}): no draw within the bounds")


def family_dist(name: str) -> Dist:
    """One family of `FAMILIES`, normalized (centred, mean coordinate variance 1), a `spec_mixture` named specDd-i, or
    the k^-2 spectrum of powerlaw64d in D dimensions, powerlawDd (bench/ORDER_HD.md runs it in 256)."""
    m = re.fullmatch(r"spec(\d+)d-(\d+)", name)
    if m:
        return spec_mixture(int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r"powerlaw(\d+)d", name)
    if name in FAMILIES:
        gm, note = FAMILIES[name](), FAMILIES[name].__doc__.split("\n")[0]
    elif m:
        D = int(m.group(1))
        gm, note = _powerlaw(D), f"{D}-D, one Gaussian with a k^-2 spectrum (k = 1..{D})"
    else:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}, specDd-i, powerlawDd")
    gm, c = normalize(gm)
    return Dist(name, "family", gm, (), dict(note=f"{note} / {c:.4f}"))


def build_suite(quick: bool, scale: float = 1.0, dims=None, profiles=None, idx_offset: int = 0,
                families=None) -> list[Dist]:
    """The suite; `scale` multiplies every distribution (data std `scale` instead of 1: `--scale`, bench/SUITE_SCALE.md).
    With `dims`: instead, one generated mixture per dimension in `dims` and tag tuple in `profiles`, at indices
    `idx_offset`, `idx_offset + 1`, ... (`--dims`; new indices give mixtures the shipped suite never saw:
    bench/bench_dims.py). With `families`: instead, those of `FAMILIES` (`--families`, bench/bench_families.py)."""
    if families:
        suite = [family_dist(f) for f in families]
    elif dims:
        suite = [suite_mixture(D, idx_offset + i, tags) for D in dims for i, tags in enumerate(profiles)]
    else:
        suite = [ring_dist(), checkerboard_dist()]
        for D, profs in PROFILES.items():
            for i, tags in enumerate(profs):
                suite.append(suite_mixture(D, i, tags))
    if quick and not dims and not families:
        suite = [d for d in suite if d.name in QUICK_SUITE]
    if scale != 1.0:
        for d in suite:
            g = d.gm
            d.gm = GaussianMixture(g.weights, g.means * scale, g.covs * scale**2)
            d.props["scale"] = scale
    for d in suite:
        d.props.update(describe(d))
    return suite


# ----------------------------------------------------------------------------------------------------------------------
# Samplers: ours discovered from sampling.PREDICTORS x sampling.SPACINGS; the peers from bench_samplers
# ----------------------------------------------------------------------------------------------------------------------
def default_nfe(data_std=None):
    "NFE of `sample`'s default at n steps on the VP SDE: n, plus Tweedie's step where `recommended_denoise` takes it."
    rule = getattr(sampling, "recommended_denoise", None)
    vp = bs.VPSDE()
    return lambda n: n + (1 if rule is None else int(rule(n, vp, data_std)))


def discover_ours(notes: list) -> list[bs.Sampler]:
    "One sampler per (predictor in sampling.PREDICTORS, spacing in sampling.SPACINGS), each with its defaults."
    preds = dict(getattr(sampling, "PREDICTORS", {}))
    spacings = tuple(getattr(sampling, "SPACINGS", ("uniform",)))
    pretty, seen = {}, set()
    for key, label, match in EXPECTED:
        hits = [k for k in preds if match(k)]
        if hits:
            pretty[hits[0]] = label
            seen.add(hits[0])
        else:
            notes.append(f"expected predictor {key!r} ({label}) is not in sampling.PREDICTORS at run time: skipped")
    out = []
    for key, cls in preds.items():
        try:
            inst = cls()
        except Exception as e:  # noqa: BLE001 -- a predictor that needs arguments has no 'documented defaults' run
            notes.append(f"predictor {key!r}: {cls.__name__}() fails with its defaults ({e!r}): skipped")
            continue
        stochastic = bool(getattr(inst, "stochastic", True))
        label = pretty.get(key, key)
        if key not in seen:
            notes.append(f"predictor {key!r} ({cls.__name__}) found in sampling.PREDICTORS and run as well")
        for sp in spacings:
            if key not in GRID_ONLY_FOR.get(sp, (key,)):
                continue
            name = f"ours {label} [{SHORT.get(sp, sp)}]"
            s = bs.Sampler(name, "ours", "VP", bs.ours(key, spacing=sp), extra=1, paired=not stochastic)
            s.key, s.spacing, s.stochastic, s.label = key, sp, stochastic, label
            out.append(s)
    for label, key, kw, grids in VARIANTS:           # non-default settings of a predictor, on some grids
        if key not in preds:
            continue
        for sp in grids:
            if sp not in spacings:
                continue
            name = f"ours {label} [{SHORT.get(sp, sp)}]"
            s = bs.Sampler(name, "ours", "VP", bs.ours(preds[key](**kw), spacing=sp), extra=1, paired=True)
            s.key, s.spacing, s.stochastic, s.label = key, sp, False, label
            out.append(s)
    if hasattr(sampling, "recommended_sampler"):     # what `sample(sde, score, shape, steps=n)` runs with no choices
        hint = {"data_std": DATA_SCALE} if DATA_SCALE != 1.0 else {}   # sample() without data_std before the option
        # the default's own end time (`sample(..., eps=None)`), unless `--eps` sets one for every sampler of ours
        own = hasattr(sampling, "recommended_eps") and OWN_EPS
        s = bs.Sampler(DEFAULT_NAME, "ours", "VP", bs.ours("auto", spacing=None, own_eps=own, **hint), extra=1,
                       paired=True, nfe_of=default_nfe(hint.get("data_std")))
        s.key, s.spacing, s.stochastic, s.label = "auto", "auto", False, "default"
        s.own_eps = own
        out.append(s)
        if QUAD64_DEFAULT and hasattr(sampling, "AUTO_THREEHALVES_MIN_DIM"):
            s = bs.Sampler(QUAD64_NAME, "ours", "VP", _without_threehalves(bs.ours("auto", spacing=None, own_eps=own)),
                           extra=1, paired=True, nfe_of=default_nfe(None))
            s.key, s.spacing, s.stochastic, s.label = "auto", "auto", False, "default, time-quadratic at 64-D"
            s.own_eps = own
            out.append(s)
        if hint:
            s = bs.Sampler(UNHINTED_NAME, "ours", "VP", bs.ours("auto", spacing=None, own_eps=own), extra=1,
                           paired=True, nfe_of=default_nfe(None))
            s.key, s.spacing, s.stochastic, s.label = "auto", "auto", False, "default, no data_std"
            s.own_eps = own
            out.append(s)
    return out


def _without_threehalves(run):
    "`run` with `sampling.AUTO_THREEHALVES_MIN_DIM` out of reach: the default as it was before the time-3/2 rule."
    def wrapped(P, steps, seed):
        keep = sampling.AUTO_THREEHALVES_MIN_DIM
        sampling.AUTO_THREEHALVES_MIN_DIM = 10**12
        try:
            return run(P, steps, seed)
        finally:
            sampling.AUTO_THREEHALVES_MIN_DIM = keep
    return wrapped


def peers() -> list[bs.Sampler]:
    S = bs.Sampler
    out = [S("diffusers DDIM", "peer", "VP", bs.diffusers_vp("ddim"), paired=True),
           S("diffusers DPM++(2M)", "peer", "VP", bs.diffusers_vp("dpm"), paired=True),
           S("diffusers DPM++(3M)", "peer", "VP", bs.diffusers_vp("dpm", solver_order=3), paired=True),
           S("diffusers UniPC", "peer", "VP", bs.diffusers_vp("unipc"), paired=True),
           S("diffusers DDPM", "peer", "VP", bs.diffusers_vp("ddpm")),
           S("torchdiffeq rk4", "peer", "VP", bs.torchdiffeq_fixed("rk4", denoise=True), per_step=4, extra=1,
             paired=True)]
    for s in out:
        s.key, s.spacing, s.stochastic, s.label = s.name, "own", not s.paired, s.name
    return out


PEER_DESC = {
    "diffusers DDIM": "`DDIMScheduler` (eta = 0, default 'leading' timesteps, final step to ᾱ = 1)",
    "diffusers DPM++(2M)": "`DPMSolverMultistepScheduler()` (dpmsolver++, solver_order=2, lower_order_final)",
    "diffusers DPM++(3M)": "`DPMSolverMultistepScheduler(solver_order=3)`",
    "diffusers UniPC": "`UniPCMultistepScheduler()` (bh2, order 2, predict_x0)",
    "diffusers DDPM": "`DDPMScheduler()` ancestral sampling (variance_type='fixed_small', the default)",
    "torchdiffeq rk4": "`odeint(method='rk4')` (3/8 rule, 4 NFE/step) on the probability-flow ODE, uniform grid T → ε, "
                       "then Tweedie's step (+1 NFE, as ours)",
}


def probe_costs(samplers, log):
    "Score calls per step and outside the steps, measured: NFE of 2- and 3-step runs on a tiny problem."
    P = bs.Problem.make(16, gm=ring_dist().gm)
    for s in samplers:
        if s.nfe_of is not None:   # `sample`'s default: its NFE per step count is known (Tweedie's step or not)
            continue
        n2, n3 = s.run(P, 2, 0)[1], s.run(P, 3, 0)[1]
        s.per_step, s.extra = n3 - n2, n2 - 2 * (n3 - n2)
        if s.per_step < 1 or s.extra < 0:
            raise RuntimeError(f"{s.name}: odd NFE count ({n2} at 2 steps, {n3} at 3)")
    log("NFE per step: " + ", ".join(f"{s.name} {s.per_step}+{s.extra}" for s in samplers
                                     if s.per_step != 1 or s.extra != (1 if s.family == 'ours' else 0)))


# ----------------------------------------------------------------------------------------------------------------------
# Per-distribution preparation: reference set, E[log p0], floors, the eps limit, the exact flow maps
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Prep:
    dist: str
    D: int
    n: int
    elogp: float               # E_{p0}[log p0] (nats)
    elogp_se: float
    sd_logp: float             # std of log p0 under p0: dlogp's floor std for n samples is sd_logp / sqrt(n)
    sw2_floor: tuple           # (mean, std) of SW2 for fresh exact sample sets of size n against the reference
    limit: float               # E[dlogp] of the exact eps + Tweedie method (x_eps ~ p_eps exactly, then Tweedie)
    limit_se: float
    map_nfe: list              # NFE of each seed's exact flow map
    map_dlogp: list            # measured dlogp of each seed's exact map (noisy; compared with `limit` as a check)
    t_score: float             # one score call at batch n (s)
    elogp_n: int = 0           # exact samples behind elogp
    seconds: float = 0.0
    limits: dict = field(default_factory=dict)   # {eps: (limit, se)} at the default's other end times (AUTO_EPS)


def limit_at(p: Prep, eps: float) -> tuple[float, float]:
    "The eps limit and its SE at end time eps: the run's own EPS, or one of the default's (`Prep.limits`)."
    if eps is None or eps != eps or eps == EPS:
        return p.limit, p.limit_se
    return p.limits[eps]


def expected_logp(gm64, n_total, seed):
    "E[log p0] and the std of log p0, from stratified exact samples (float64)."
    g = _gen(seed)
    tot, tot2, done = 0.0, 0.0, 0
    while done < n_total:
        b = min(100_000, n_total - done)
        lp = gm64.log_prob(gm64.sample(b, generator=g, stratified=True))
        tot, tot2, done = tot + lp.sum().item(), tot2 + lp.square().sum().item(), done + b
    mean = tot / n_total
    var = max(tot2 / n_total - mean * mean, 0.0)
    # stratification makes the estimate's SE smaller than sd/sqrt(N): sd/sqrt(N) is an upper bound, reported as such
    return mean, math.sqrt(var / n_total), math.sqrt(var)


def eps_limit(gm64, vp, n_total, seed, eps=None):
    """E[dlogp] of the converged method 'reach eps exactly, then Tweedie's step' with common random numbers:
    x0 ~ p0 (stratified), x_eps = alpha x0 + sigma z, x0_hat = Tweedie(x_eps); mean of log p0(x0_hat) - log p0(x0)."""
    g = _gen(seed)
    vals = []
    done = 0
    while done < n_total:
        b = min(20_000, n_total - done)
        x0 = gm64.sample(b, generator=g, stratified=True)
        t = torch.full((b,), EPS if eps is None else eps, dtype=torch.float64)
        a, s = vp.marginal_coeffs(t)
        xe = a[:, None] * x0 + s[:, None] * torch.randn(b, gm64.D, generator=g, dtype=torch.float64)
        xh = (xe + s[:, None] ** 2 * gm64.marginal_score(xe, t, vp)) / a[:, None]
        vals.append(gm64.log_prob(xh) - gm64.log_prob(x0))
        done += b
    v = torch.cat(vals)
    return v.mean().item(), v.std().item() / math.sqrt(v.numel())


def prepare(d: Dist, n: int, seeds, args, log) -> tuple[Prep, bs.Problem, dict]:
    t0 = time.perf_counter()
    gm64 = d.gm
    P = bs.Problem.make(n, gm=gm64)                      # float32 mixture and exact scores for the samplers
    ref = gm64.sample(n, generator=_gen(args.seed + 1), stratified=True).float()
    n_e = args.elogp_n or (100_000 if args.quick else 300_000)
    elogp, elogp_se, sd = expected_logp(gm64, n_e, args.seed + 2)
    reps = 8 if args.quick else 20
    fg = _gen(args.seed + 3)
    sw2f = metrics.noise_floor(lambda x, y: metrics.sliced_wasserstein(x, y, N_PROJ, _gen(args.seed + 7)),
                               lambda m, generator=None: gm64.sample(m, generator=generator).float(), n, reps, fg, ref)
    lim, lim_se = eps_limit(gm64, P.vp, 20_000 if args.quick else 100_000, args.seed + 4)
    # the default's other end times (sampling.AUTO_EPS), same draws: its own error is measured against these
    other = sorted({e for _, e in getattr(sampling, "AUTO_EPS", ())} - {EPS})
    limits = {e: eps_limit(gm64, P.vp, 20_000 if args.quick else 100_000, args.seed + 4, eps=e) for e in other}
    maps, map_nfe, map_dlogp = {}, [], []
    for s in seeds:
        a = time.perf_counter()
        x_eps, x0, nfe = exact_map(P, gm64, s, args.map_rtol)
        lp0 = gm64.log_prob(x0)
        maps[s] = dict(x0=x0, lp0=lp0)
        map_nfe.append(nfe)
        map_dlogp.append(lp0.mean().item() - elogp)
        log(f"    exact map seed {s}: {nfe} NFE (float64 dopri5, rtol {args.map_rtol:g}), "
            f"{time.perf_counter() - a:.1f} s, dlogp {map_dlogp[-1]:+.4f}")
    t_score = bs.score_time(P, "VP", 11)
    prep = Prep(d.name, d.D, n, elogp, elogp_se, sd, (sw2f.mean, sw2f.std), lim, lim_se, map_nfe, map_dlogp, t_score,
                n_e, limits=limits)
    prep.seconds = time.perf_counter() - t0
    ctx = dict(gm64=gm64, ref=ref, maps=maps)
    return prep, P, ctx


def exact_map(P, gm64, seed, rtol):
    "bench_samplers.exact_flow_map (float64 dopri5 from T to eps, then Tweedie) and its NFE."
    return bs.exact_flow_map(P, seed, rtol=rtol, return_nfe=True)


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Rec:
    dist: str
    sampler: str
    T: int                     # NFE budget
    seed: int
    nfe: int = -1
    steps: int = -1
    wall: float = math.nan
    err: str = ""
    dlogp: float = math.nan
    dlogp_se: float = math.nan
    sw2: float = math.nan
    pd: float = math.nan       # paired: mean log p0(x) - mean log p0(exact map of the same x_T)
    pd_se: float = math.nan
    rms: float = math.nan      # paired: RMS over samples and coordinates of x - exact map (data std units)
    eps: float = math.nan      # the run's end time (NaN: the run's EPS; the default picks its own, sampling.recommended_eps)


def evaluate(rec: Rec, x, prep: Prep, ctx: dict, paired: bool, sw2_seed: int):
    x = x.detach().float()
    if not torch.isfinite(x).all():
        rec.err = rec.err or "non-finite samples"
        return
    lp = ctx["gm64"].log_prob(x.double())
    rec.dlogp = lp.mean().item() - prep.elogp
    rec.dlogp_se = lp.std().item() / math.sqrt(lp.numel())
    rec.sw2 = metrics.sliced_wasserstein(x, ctx["ref"], N_PROJ, _gen(sw2_seed))
    if paired:
        m = ctx["maps"][rec.seed]
        dd = lp - m["lp0"]
        rec.pd, rec.pd_se = dd.mean().item(), dd.std().item() / math.sqrt(dd.numel())
        rec.rms = (x.double() - m["x0"]).square().mean().sqrt().item()


def run_cell(s: bs.Sampler, P, prep, ctx, T, seeds, args, cache) -> list[Rec]:
    steps = s.steps_for(T)
    out = []
    for seed in seeds:
        key = (s.name, steps, seed)
        if key in cache:                               # the same steps as a smaller budget: the same run
            r = Rec(**{**vars(cache[key]), "T": T})
            out.append(r)
            continue
        r = Rec(prep.dist, s.name, T, seed, steps=steps)
        if getattr(s, "own_eps", False):
            r.eps = sampling.recommended_eps(steps, P.vp)
        a = time.perf_counter()
        try:
            x, nfe, _ = s.run(P, steps, seed)
            r.wall, r.nfe = time.perf_counter() - a, int(nfe)
            evaluate(r, x, prep, ctx, s.paired, args.seed + 7)
        except Exception as e:  # noqa: BLE001 -- a collapse (NaN/inf, a library error) is a result, not a crash
            r.wall, r.err = time.perf_counter() - a, f"{type(e).__name__}: {str(e)[:160]}"
        cache[key] = r
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation over seeds, noise-aware ranks, win rates
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    dist: str
    sampler: str
    T: int
    nfe: int
    S: int
    failed: bool
    dlogp: float               # mean over seeds of the direct dlogp
    dlogp_se: float
    err: float                 # the |dlogp| used to judge: deterministic |limit + paired|, stochastic |direct|
    err_se: float
    signed: float              # the signed dlogp behind `err`
    sw2: float
    sw2_se: float
    pd: float = math.nan
    pd_se: float = math.nan
    rms: float = math.nan
    paired: bool = False
    wall: float = math.nan
    msg: str = ""
    net: float = math.inf      # |signed - eps limit|: the sampler's own error, without the end time eps's
    net_se: float = math.nan
    eps: float = math.nan      # the sampler's end time (the run's EPS, or the default's own)


def aggregate(recs, preps, spec) -> dict:
    groups = {}
    for r in recs:
        groups.setdefault((r.dist, r.sampler, r.T), []).append(r)
    cells = {}
    for (dn, sn, T), rs in groups.items():
        p, S = preps[dn], len(rs)
        bad = [r for r in rs if r.err or not math.isfinite(r.dlogp) or not math.isfinite(r.sw2)]
        paired = spec[sn].paired
        c = Cell(dn, sn, T, max(r.nfe for r in rs), S, bool(bad), math.nan, math.nan, math.inf, math.nan, math.nan,
                 math.inf, math.nan, paired=paired, wall=sum(r.wall for r in rs) / S,
                 msg=bad[0].err if bad else "")
        c.eps = rs[0].eps if rs[0].eps == rs[0].eps else EPS
        if not bad:
            c.dlogp = sum(r.dlogp for r in rs) / S
            c.dlogp_se = math.sqrt(sum(r.dlogp_se**2 for r in rs)) / S
            c.sw2 = sum(r.sw2 for r in rs) / S
            sd = math.sqrt(sum((r.sw2 - c.sw2) ** 2 for r in rs) / (S - 1)) if S > 1 else 0.0
            c.sw2_se = max(sd, p.sw2_floor[1]) / math.sqrt(S)
            if paired:
                # paired with the exact map to the run's EPS, whatever the sampler's own end time: signed = the EPS
                # limit + paired gap is E[dlogp] all the same, with the map's draws as control variates
                c.pd = sum(r.pd for r in rs) / S
                c.pd_se = math.sqrt(sum(r.pd_se**2 for r in rs)) / S
                c.rms = sum(r.rms for r in rs) / S
                c.signed = p.limit + c.pd
                c.err, c.err_se = abs(c.signed), math.sqrt(p.limit_se**2 + c.pd_se**2)
                if c.eps == EPS:
                    c.net, c.net_se = abs(c.pd), c.pd_se
                else:                                  # own error: against the limit at its own end time
                    lim, lim_se = limit_at(p, c.eps)
                    c.net = abs(c.signed - lim)
                    c.net_se = math.sqrt(p.limit_se**2 + c.pd_se**2 + lim_se**2)
            else:
                c.signed = c.dlogp
                c.err, c.err_se = abs(c.dlogp), c.dlogp_se
                c.net, c.net_se = abs(c.dlogp - p.limit), math.hypot(c.dlogp_se, p.limit_se)
        cells[(dn, sn, T)] = c
    return cells


def _se_pair(a: Cell, b: Cell, metric: str) -> float:
    if metric == "sw2":
        return math.hypot(a.sw2_se, b.sw2_se)
    if a.paired and b.paired:                          # both map the same x_T: the shared eps limit cancels
        if metric == "net" and a.eps != b.eps:         # except in 'net' at two end times: their limits' SEs
            return math.hypot(a.net_se, b.net_se)
        return math.hypot(a.pd_se, b.pd_se)
    if metric == "net":
        return math.hypot(a.net_se, b.net_se)
    return math.hypot(a.err_se, b.err_se)


def _val(c: Cell, metric: str) -> float:
    return {"sw2": c.sw2, "err": c.err, "net": c.net}[metric]


def at_least_as_good(a: Cell, b: Cell, metric: str) -> bool:
    "a is at least as accurate as b within 2 standard errors (a failed run loses; against a failed run a wins)."
    if a.failed:
        return False
    if b.failed:
        return True
    return _val(a, metric) <= _val(b, metric) + 2 * _se_pair(a, b, metric)


def clearly_better(a: Cell, b: Cell, metric: str) -> bool:
    if a.failed:
        return False
    if b.failed:
        return True
    return _val(a, metric) + 2 * _se_pair(a, b, metric) < _val(b, metric)


METRICS = ("err", "sw2")


def best_peer(cells, peers, d, T, metric) -> Cell | None:
    "The peer most accurate on `metric` on distribution d at budget T (a failed run last; None if no peer ran there)."
    ps = [cells[(d, p, T)] for p in peers if (d, p, T) in cells]
    return min(ps, key=lambda x: (x.failed, _val(x, metric))) if ps else None


def wins_vs_best_peer(cells, peers, sn, dists, T, metrics=METRICS) -> tuple[int, int]:
    """(on how many of `dists` sampler sn is at least as accurate as the best peer on every one of `metrics`, the best
    peer chosen per metric; on how many both sn and a peer ran)."""
    k = n = 0
    for d in dists:
        c = cells.get((d, sn, T))
        if c is None or best_peer(cells, peers, d, T, metrics[0]) is None:
            continue
        n += 1
        k += all(at_least_as_good(c, best_peer(cells, peers, d, T, m), m) for m in metrics)
    return k, n


def ranks(cells, dists, names, T, metrics=METRICS) -> dict:
    """{(dist, sampler): (rank on metric 1, rank on metric 2, mean of the two)}. Noise-aware (Copeland) ranks: on each
    metric a sampler scores (number of samplers it is clearly better than) - (number clearly better than it), and its
    rank is 1 + the number of samplers with a higher score. A noisy estimate beats few and loses to few, so it lands
    mid-table instead of at the top (as '1 + number clearly better' would put it)."""
    out = {}
    for dn in dists:
        cs = [cells[(dn, sn, T)] for sn in names if (dn, sn, T) in cells]
        rk = {}
        for m in metrics:
            score = {c.sampler: sum(clearly_better(c, o, m) for o in cs if o is not c)
                     - sum(clearly_better(o, c, m) for o in cs if o is not c) for c in cs}
            for c in cs:
                rk.setdefault(c.sampler, []).append(1 + sum(v > score[c.sampler] for v in score.values()))
        for sn, (a, b) in rk.items():
            out[(dn, sn)] = (a, b, 0.5 * (a + b))
    return out


def median(v):
    v = sorted(v)
    n = len(v)
    return math.nan if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


def summarize(cells, suite_names, samplers, nfes, preps, metrics=METRICS):
    """Per NFE: median/mean combined rank per sampler (ranked on `metrics`), the recommendation, win rates (always on
    |dlogp| and SW2), the target-1 fractions."""
    fam = {s.name: s.family for s in samplers}
    names = [s.name for s in samplers]
    peer_names = [n for n in names if fam[n] == "peer"]
    out = {}
    for T in nfes:
        rk = ranks(cells, suite_names, names, T, metrics)
        stats = {}
        for sn in names:
            rs = [rk[(dn, sn)][2] for dn in suite_names if (dn, sn) in rk]
            if rs:
                stats[sn] = dict(median=median(rs), mean=sum(rs) / len(rs), n=len(rs),
                                 top=sum(r == 1.0 for r in rs))
        full = [sn for sn in stats if stats[sn]["n"] == len(suite_names)]   # ran on every distribution
        order = sorted(full, key=lambda sn: (stats[sn]["median"], stats[sn]["mean"]))
        ours_order = [sn for sn in order if fam[sn] == "ours"]
        rec = ours_order[0] if ours_order else None
        best = order[0] if order else None
        w = {}
        m0 = metrics[0]                                  # "err" (|dlogp|) or "net" (|dlogp - eps limit|)
        if rec is not None:
            for p in peer_names + ["best peer"]:
                both = dl = sw = n = 0
                for dn in suite_names:
                    o = cells.get((dn, rec, T))
                    if o is None:
                        continue
                    if p == "best peer":
                        pcs = [cells[(dn, q, T)] for q in peer_names if (dn, q, T) in cells]
                        if not pcs:
                            continue
                        a = at_least_as_good(o, min(pcs, key=lambda c: (c.failed, _val(c, m0))), m0)
                        b = at_least_as_good(o, min(pcs, key=lambda c: (c.failed, c.sw2)), "sw2")
                    else:
                        pc = cells.get((dn, p, T))
                        if pc is None:
                            continue
                        a, b = at_least_as_good(o, pc, m0), at_least_as_good(o, pc, "sw2")
                    n += 1
                    dl, sw, both = dl + a, sw + b, both + (a and b)
                if n:
                    w[p] = dict(both=both / n, err=dl / n, sw2=sw / n, n=n)
        # oracle: for each distribution the best of ours on each metric vs the best peer on it
        orc = dict(both=0, err=0, sw2=0, n=0)
        for dn in suite_names:
            oc = [cells[(dn, sn, T)] for sn in names if fam[sn] == "ours" and (dn, sn, T) in cells]
            pc = [cells[(dn, sn, T)] for sn in peer_names if (dn, sn, T) in cells]
            if not oc or not pc:
                continue
            r = {}
            for m, lab in ((m0, "err"), ("sw2", "sw2")):
                key = (lambda c: (c.failed, _val(c, m)))
                r[lab] = at_least_as_good(min(oc, key=key), min(pc, key=key), m)
            orc["n"] += 1
            orc["err"] += r["err"]
            orc["sw2"] += r["sw2"]
            orc["both"] += r["err"] and r["sw2"]
        if orc["n"]:
            orc = {k: (v / orc["n"] if k != "n" else v) for k, v in orc.items()}
        # target-1 style fractions for every sampler: |dlogp| <= 0.03 and SW2 <= floor mean + 2 std
        t1 = {}
        for sn in names:
            ok = okn = tot = 0
            for dn in suite_names:
                c = cells.get((dn, sn, T))
                if c is None:
                    continue
                p = preps[dn]
                tot += 1
                sw_ok = (not c.failed) and c.sw2 <= p.sw2_floor[0] + 2 * p.sw2_floor[1]
                ok += sw_ok and c.err <= 0.03
                okn += sw_ok and c.net <= 0.03
            if tot:
                t1[sn] = dict(raw=ok / tot, net=okn / tot, n=tot)
        out[T] = dict(stats=stats, order=order, ours_order=ours_order, rec=rec, best=best, win=w, oracle=orc, t1=t1,
                      ranks=rk)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def _pct(x):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def _short(sn):
    return sn.replace("ours ", "").replace("diffusers ", "dfs ")


def describe_sampler(s) -> str:
    if s.family == "peer":
        return PEER_DESC.get(s.name, "")
    kind = "stochastic" if s.stochastic else "deterministic"
    return (f"`sample(vp, score, shape, predictor={s.key!r}, spacing={s.spacing!r})` ({kind}; "
            f"{s.per_step} NFE/step + {s.extra})")


def write_report(out: Path, R: dict):
    args, suite, preps, recs, samplers = R["args"], R["suite"], R["preps"], R["recs"], R["samplers"]
    nfes, summ, cells, info = R["nfes"], R["summary"], R["cells"], R["info"]
    spec = {s.name: s for s in samplers}
    fam = {s.name: s.family for s in samplers}
    names = [s.name for s in samplers]
    dn = [d.name for d in suite]
    L = []
    w = L.append
    bold = lambda sn: f"**{sn}**" if fam.get(sn) == "ours" else sn  # noqa: E731
    quick = " (**--quick smoke run: not the full benchmark; its numbers are not the suite's results**)" if args.quick else ""
    w("# Sampler suite: `sde_diffusion.sampling` vs diffusers and torchdiffeq over a suite of Gaussian mixtures\n")
    w(f"Written by `bench/bench_suite.py`{quick}. Every distribution is a `sde_diffusion.toy.GaussianMixture`, so "
      "every sampler is driven by the exact score and every error is the sampler's own (or, where said, the "
      f"ε = {eps_tex()} end time's). Issue 10, item 1.\n")
    if getattr(args, "scale", 1.0) != 1.0:
        w(f"**Every distribution scaled by {args.scale:g}** (`--scale`: data std {args.scale:g} instead of 1); 'ours "
          f"default' is `sample(..., data_std={args.scale:g})`, '{UNHINTED_NAME}' the same call without it.\n")
    w(f"This run: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_suite.py {' '.join(R.get('argv', []))}` "
      f"({R['total_s'] / 60:.0f} min wall, {R.get('cpu_s', math.nan) / 60:.0f} min CPU)"
      + (f"; this report and the figure were rewritten from its dump with `--report-from`" if R.get("rendered_from")
         else "") + ". "
      "Rerun: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_suite.py` (full) or "
      "`... bench/bench_suite.py --quick` (smoke run, < 2 min); `--help` for the rest (`--dump FILE` keeps the raw "
      "runs, `--report-from FILE` rewrites this report and the figure from them).\n")

    # ---- headline
    w("## Headline: which sampler at which NFE\n")
    w("'Rank' is noise-aware: on each distribution and metric (|dlogp|, SW2) each sampler scores the number of "
      "samplers it is clearly better than (by more than 2 standard errors) minus the number clearly better than it; "
      "its rank is 1 + the number of samplers with a higher score (so a noisy estimate lands mid-table), averaged over "
      "the two metrics; the table gives its median (mean) over the suite. 'Use' is the sampler with the best median rank among those run on "
      "every distribution; 'win rate' is the fraction of the suite on which our recommended sampler is at least as "
      "accurate as the best peer on that distribution (within 2 SE, on both metrics; the best peer is chosen per "
      "distribution and per metric).\n")
    w("The last column ranks on the sampler's own error instead, |dlogp − ε limit| (see the suite table): it does not "
      f"reward a discretization error that happens to cancel the ε = {eps_tex()} end time's over-concentration.\n")
    w("| NFE | use (all samplers) | best of ours | its rank: median (mean) | win rate vs best peer (both metrics) "
      "| ours within 0.03 nats & SW2 floor | best peer's | ranked net of the ε limit: use (best of ours) |")
    w("|---|---|---|---|---|---|---|---|")
    for T in nfes:
        s = summ[T]
        rec, best = s["rec"], s["best"]
        if rec is None:
            continue
        st = s["stats"][rec]
        bp = [sn for sn in s["order"] if fam[sn] == "peer"]
        bpt1 = max((s["t1"][sn]["raw"] for sn in bp if sn in s["t1"]), default=math.nan)
        sn_ = R["summary_net"][T]
        net = bold(sn_["best"]) + ("" if sn_["best"] == sn_["rec"] else f" ({_short(sn_['rec'])})")
        w(f"| {T} | {bold(best)} | {bold(rec)} | {st['median']:.1f} ({st['mean']:.1f}) | "
          f"{_pct(s['win'].get('best peer', {}).get('both'))} | {_pct(s['t1'][rec]['raw'])} | {_pct(bpt1)} | {net} |")
    w("")
    hi = [T for T in nfes if T >= 10]
    if hi:
        cand = []
        for sn in names:
            if fam[sn] != "ours":
                continue
            meds = [summ[T]["stats"][sn]["median"] for T in hi
                    if sn in summ[T]["stats"] and summ[T]["stats"][sn]["n"] == len(dn)]
            if len(meds) == len(hi):
                cand.append((sum(meds) / len(meds), sn))
        cand.sort()
        if cand:
            w(f"One default for every NFE ≥ 10 (lowest mean over those NFEs of the median rank): "
              + ", then ".join(f"**{sn}** ({v:.1f})" for v, sn in cand[:3]) + ". Neighbouring samplers' ranks are "
              "close (see the rank table): where the 'use' column hops between them from one NFE to the next, the "
              "difference is small.\n")
    tg = R["targets"]
    w("Targets of issue 10 (details below):\n")
    for line in tg["lines"]:
        w(f"- {line}")
    w("")
    default_section(R, w, bold)

    # ---- machine
    w("## Machine, run time, setup\n")
    w(f"- CPU: {info['cpu']}, {info['cores']} cores (shared with other jobs); {info['platform']}")
    w(f"- Python {info['python']}, torch {info['torch']} ({info['threads']} thread, OMP_NUM_THREADS={info['omp']}), "
      f"diffusers {info['diffusers']}, torchdiffeq {info['torchdiffeq']}")
    w(f"- Code: git HEAD {info['commit']} (working tree); sde_diffusion/sampling.py sha1 {R['sampling_sha1']} "
      "(hashed when the run started)")
    w(f"- Load average (1/5/15 min): before {R['load_before']}, after {R['load_after']}; during (per distribution): "
      + ", ".join(f"{k} {v}" for k, v in R["load_during"].items()))
    w(f"- Total run time {R['total_s'] / 60:.1f} min wall, {R.get('cpu_s', math.nan) / 60:.1f} min CPU of this "
      "process (the wall time grows with the load above) (" + ", ".join(
        f"{d} {R['dist_s'][d]:.0f} s" for d in dn) + ").")
    w(f"- Seeds per cell: {len(R['seeds'])} (each seed: its own prior draw x_T and noise; every sampler gets the same x_T "
      f"for a given seed). Samples per run n: " + ", ".join(f"{D}-D {n}" for D, n in R["n_by_D"].items()) + ".")
    w(f"- NFE budgets: {', '.join(map(str, nfes))}. Each sampler takes the most steps whose NFE fits the budget "
      "(ours: steps + 1 for the final Tweedie step, except the default below "
      f"{getattr(sampling, 'AUTO_DENOISE_MIN_STEPS', 1)} steps, which takes no Tweedie step (`recommended_denoise`); "
      "Heun 2 per step; rk4 4 per step + 1). Actual NFEs are in the "
      "per-distribution tables' source (`--dump`); a budget a sampler cannot use fully (e.g. rk4 at 8 = rk4 at 5) "
      "repeats its smaller run.")
    w(f"- VP SDE (β_min 0.1, β_max 20, T = 1). Ours and rk4 run from T to ε = {eps_tex()}, then Tweedie's step; "
      "diffusers' schedulers use their default 1000-step linear betas (the DDPM discretization of this SDE) with "
      "ε-prediction −√(1−ᾱᵢ)·score(x, tᵢ) at the continuous tᵢ with ᾱ(tᵢ) = ᾱᵢ, `clip_sample=False`, "
      "`thresholding=False`, default timestep spacings (see bench/RESULTS.md and /work/shared/PITFALLS.md).\n")
    w("Our predictors were discovered from `sampling.PREDICTORS` at run time: "
      + ", ".join(f"`{k}`" for k in R["found"]) + ". Spacings: " + ", ".join(f"`{k}`" for k in R["spacings"]) + ".")
    for note in R["notes"]:
        w(f"- {note}")
    w("")
    w("Samplers (ours in **bold**; name [grid]: uni = uniform in t, logsnr = uniform in log-SNR, edm = EDM ρ = 7):\n")
    for s in samplers:
        w(f"- {bold(s.name)}: {describe_sampler(s)}")
    if R.get("t_score_64") is None:                   # no 64-D distribution in this run
        pass
    elif R.get("sel64") and getattr(args, "ours64", None):
        w(f"\n64-D distributions (score ~{R['t_score_64'] * 1e3:.0f} ms per call): they ran all peers but only the "
          "samplers of ours named with `--ours64`: " + ", ".join(R["sel64"]) + ". Rankings and recommendations use the "
          "samplers run on every distribution.")
    elif R.get("sel64"):
        w(f"\n64-D distributions (score ~{R['t_score_64'] * 1e3:.0f} ms per call): to fit the time budget they ran "
          "all peers but only our samplers that ranked in the top "
          f"{args.top64} of ours at some NFE on the 2-D and 8-D part: " + ", ".join(R["sel64"]) + ". Rankings and "
          "recommendations use the samplers run on every distribution.")
    w("")

    # ---- suite
    w("## The suite\n")
    w("Each distribution is normalized to zero mean and unit overall data std (mean coordinate variance "
      "trace(Cov)/D = 1), so one VP SDE fits all; the properties below are measured on the normalized mixtures. The "
      "generated mixtures (`suite_mixture`, seed "
      f"{SUITE_SEED}) have 2–12 components (2–6 in 64-D), weights Dirichlet(1) floored at 1 %, bulk components with "
      "condition number ≤ 10 and a scale fitted to unit variance, plus the hard feature each one is tagged with: "
      "**sharp** (a third of the components with smallest axis std 0.02), **far** (a 1 % component of std 0.3 at "
      "distance 8), **broad** (a 2 % component of std 5), **aniso** (every bulk component with condition number "
      "10–100, one exactly 100). The checkerboard (`toy.sample_checkerboard`) has no exact mixture form: each of its "
      f"8 squares is a {CHECKER_M}×{CHECKER_M} grid of isotropic Gaussians whose mean and covariance match the square's "
      "exactly.\n")
    w("| distribution | D | K | tags | min w | max cond | component axis std | max ‖μ‖ | n | E[log p₀] | dlogp floor std "
      "(1 run) | SW2 floor (1 run) | ε limit of dlogp | exact-map check |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in suite:
        p, q = d.props, preps[d.name]
        fl = q.sd_logp / math.sqrt(q.n)
        z = (sum(q.map_dlogp) / len(q.map_dlogp) - q.limit) / (fl / math.sqrt(len(q.map_dlogp)))
        w(f"| {d.name} | {p['D']} | {p['K']} | {', '.join(d.tags) or d.kind} | {p['w_min']:.3f} | "
          f"{p['cond_max']:.0f} | {p['std_min']:.3g}–{p['std_max']:.3g} | {p['dist_max']:.1f} | {q.n} | "
          f"{q.elogp:.3f} | {fl:.4f} | {q.sw2_floor[0]:.4f} ± {q.sw2_floor[1]:.4f} | {q.limit:+.4f} ± {q.limit_se:.4f} "
          f"| {sum(q.map_nfe) / len(q.map_nfe):.0f} NFE, z = {z:+.1f} |")
    w("")
    w("- **ε limit**: E[dlogp] of the converged method every sampler here approximates (reach "
      f"ε = {eps_tex()} exactly, then Tweedie's step), computed with common random numbers (x₀ ~ p₀, "
      "x_ε = α x₀ + σ z, log p₀(Tweedie(x_ε)) − "
      "log p₀(x₀)): the value every sampler here converges to as its NFE grows (diffusers' schedulers end on their "
      "own grid, near it); a sampler lands nearer 0 only through an error of the opposite sign. Where it exceeds 0.03 nats (components sharper than "
      "≈ 0.05 data std, in many dimensions) the |dlogp| ≤ 0.03 target is out of reach at "
      f"ε = {eps_tex()} for every sampler, ours and peers alike.")
    w("- **exact-map check**: the exact flow map (float64 dopri5, rtol = atol = "
      f"{args.map_rtol:g}, then Tweedie) of each seed's x_T; z = (its mean measured dlogp − ε limit) / SE should be "
      "O(1) (the prior N(0, I) differs slightly from p_T).")
    w("")

    # ---- metrics
    w("## Metrics and rules\n")
    w("- **dlogp** = mean exact log p₀ of the samples − E[log p₀] (nats; > 0 too concentrated, < 0 too spread). "
      f"E[log p₀] from {min(q.elogp_n for q in preps.values()):,} stratified exact samples (its SE ≤ sd(log p₀)/√N is "
      "a shared offset, small against the stochastic samplers' SE). For deterministic samplers the judged value is "
      "ε limit + paired dlogp (mean log p₀(x) − mean log p₀(exact map of the same x_T)): the shared sample noise of "
      "the draw cancels, leaving a standard error of ~10⁻⁴–10⁻³ instead of the floor std; for stochastic samplers it "
      "is the direct value, with the floor std / √seeds as its SE. Mean over seeds; SE = √(Σ SE²)/seeds.")
    w(f"- **SW2**: sliced 2-Wasserstein distance ({N_PROJ} fixed directions) to a stratified reference set of n exact "
      "samples; its floor (mean ± std) is the SW2 of fresh exact sample sets of the same size (20 repeats). SE of a "
      "mean over seeds: max(std between seeds, floor std)/√seeds.")
    w("- **paired RMS** (deterministic samplers): RMS over samples and coordinates of x − exact map(x_T), in data "
      "std units.")
    w("- **win / at least as accurate**: value_ours ≤ value_peer + 2·SE of the difference (paired SE when both are "
      "deterministic); a run with NaN/inf or an error loses. 'Clearly better' = better by more than 2 SE.")
    w("")

    # ---- win rates
    w("## Win rates of our recommended sampler against each peer\n")
    w("Fraction of the suite on which our recommended sampler at that NFE (the 'best of ours' of the headline) is at "
      "least as accurate as the peer (within 2 SE). 'best peer' picks, per distribution and per metric, the most "
      "accurate peer; 'oracle' compares the best of ours with the best peer per distribution and metric (a different "
      "sampler may win each).\n")
    for m, title in (("both", "both metrics"), ("err", "|dlogp|"), ("sw2", "SW2")):
        w(f"### {title}\n")
        w("| peer | " + " | ".join(str(T) for T in nfes) + " |")
        w("|---|" + "---|" * len(nfes))
        rows = [sn for sn in names if fam[sn] == "peer"] + ["best peer"]
        for p in rows:
            vals = [_pct(summ[T]["win"].get(p, {}).get(m)) for T in nfes]
            w(f"| {p} | " + " | ".join(vals) + " |")
        w("| oracle (best of ours vs best peer) | " + " | ".join(_pct(summ[T]["oracle"].get(m)) for T in nfes) + " |")
        w("| (our recommended sampler) | " + " | ".join(_short(summ[T]["rec"] or "–") for T in nfes) + " |")
        w("")

    # ---- ranks
    w("## Median (mean) rank per sampler\n")
    w("Noise-aware combined rank (see the headline), median (mean) over the distributions the sampler ran on; "
      "'n' = that number. Lower is better; the best median at each NFE in bold.\n")
    w("| sampler | n | " + " | ".join(str(T) for T in nfes) + " |")
    w("|---|---|" + "---|" * len(nfes))
    for sn in names:
        row, nn = [], 0
        for T in nfes:
            st = summ[T]["stats"].get(sn)
            if st is None:
                row.append("–")
                continue
            nn = max(nn, st["n"])
            txt = f"{st['median']:.1f} ({st['mean']:.1f})"
            row.append(f"**{txt}**" if sn == summ[T]["best"] else txt)
        w(f"| {bold(sn)} | {nn} | " + " | ".join(row) + " |")
    w("")
    # fraction within 0.03 / floor per sampler
    w("### Fraction of the suite with |dlogp| ≤ 0.03 nats and SW2 ≤ floor mean + 2 std\n")
    w("First number: as measured; in brackets: net of the ε limit (|dlogp − ε limit| ≤ 0.03: the sampler's own "
      "error).\n")
    w("| sampler | " + " | ".join(str(T) for T in nfes) + " |")
    w("|---|" + "---|" * len(nfes))
    for sn in names:
        row = []
        for T in nfes:
            t = summ[T]["t1"].get(sn)
            row.append("–" if t is None else f"{_pct(t['raw'])} ({_pct(t['net'])})")
        w(f"| {bold(sn)} | " + " | ".join(row) + " |")
    w("")
    # paired RMS median
    w("### Deterministic samplers: median over the suite of the paired RMS error to the exact map\n")
    w("| sampler | " + " | ".join(str(T) for T in nfes) + " |")
    w("|---|" + "---|" * len(nfes))
    for sn in names:
        if not spec[sn].paired:
            continue
        row = []
        for T in nfes:
            v = [cells[(d, sn, T)].rms for d in dn if (d, sn, T) in cells and not cells[(d, sn, T)].failed]
            nf = sum(cells[(d, sn, T)].failed for d in dn if (d, sn, T) in cells)
            row.append("–" if not v and not nf else (f"{median(v):.2g}" if v else "fail") + (f" ({nf} fail)" if nf else ""))
        w(f"| {bold(sn)} | " + " | ".join(row) + " |")
    w("")

    # ---- targets
    w("## Targets of issue 10\n")
    for block in tg["blocks"]:
        w(block)
    w("")

    # ---- observations
    w("## Observations (computed from the runs)\n")
    for block in R["observations"]:
        w(block)
    w("")

    # ---- per distribution
    w("## Per-distribution results\n")
    w("Each cell: judged dlogp (signed, nats; see the metrics) / SW2 − floor mean in floor stds (σ). 'fail' = NaN/inf "
      "or an error in some seed. Mean over the seeds.\n")
    for d in suite:
        q = preps[d.name]
        w(f"### {d.name} (D = {d.D}, ε limit {q.limit:+.4f}, SW2 floor {q.sw2_floor[0]:.4f} ± {q.sw2_floor[1]:.4f})\n")
        w("| sampler | " + " | ".join(str(T) for T in nfes) + " |")
        w("|---|" + "---|" * len(nfes))
        for sn in names:
            row = []
            for T in nfes:
                c = cells.get((d.name, sn, T))
                if c is None:
                    row.append("–")
                elif c.failed:
                    row.append("fail")
                else:
                    z = (c.sw2 - q.sw2_floor[0]) / q.sw2_floor[1]
                    row.append(f"{c.signed:+.3f} / {z:+.0f}σ")
            if any(v != "–" for v in row):
                w(f"| {bold(sn)} | " + " | ".join(row) + " |")
        w("")
    (out / "SUITE.md").write_text("\n".join(L) + "\n")


def default_section(R, w, bold):
    """Issue 10, item 4: where `sample`'s default (`predictor="auto"`, `sampling.recommended_sampler(steps)`) stands at
    each budget of this run: its rank, the best of ours, the old default (reverse diffusion on the uniform grid)."""
    rec_fn = getattr(sampling, "recommended_sampler", None)
    ours = [s for s in R["samplers"] if s.family == "ours" and hasattr(s, "key")]
    if rec_fn is None or not ours:
        return
    scale = getattr(R["args"], "scale", 1.0)
    if scale != 1.0:                   # the default was told the data's scale (`--scale`)
        rec_fn = (lambda f: lambda n, **kw: f(n, data_std=scale, **kw))(rec_fn)
    dims = sorted({d.D for d in R["suite"]})   # `sample` passes D (the numbers per sample): the rule may differ by D

    def rec_dims(n):   # [(choice, [dimensions])] at n steps
        out = []
        for D in dims:
            c = rec_fn(n, dim=D)
            for ch, ds in out:
                if ch == c:
                    ds.append(D)
                    break
            else:
                out.append((c, [D]))
        return out

    def dim_label(ds):
        return "D = " + ", ".join(map(str, ds))
    by_key = {(s.key, s.spacing): s for s in ours}
    summ, summ_net, cells, dn = R["summary"], R["summary_net"], R["cells"], [d.name for d in R["suite"]]
    old = by_key.get(("reverse_diffusion", "uniform"))

    def collapses(sn, T):
        cs = [cells[(d, sn, T)] for d in dn if (d, sn, T) in cells]
        return sum(c.failed or c.err > 1 for c in cs), len(cs)

    def rank(s, sn):
        st = s["stats"].get(sn)
        return "–" if st is None else f"{st['median']:.1f} ({st['mean']:.1f})"

    peer_names = [x.name for x in R["samplers"] if x.family == "peer"]

    def vs_peer(sn, T, metric):   # on how many mixtures at least as accurate as the best peer on (metric, SW2)
        return "{} of {}".format(*wins_vs_best_peer(cells, peer_names, sn, dn, T, (metric, "sw2")))

    w("## The default of `sample` (`predictor=\"auto\"`)\n")
    rules = {}                                     # per dimension: the rule as runs of steps with the same choice
    for D in dims:
        spans = []
        for n in range(1, max(R["nfes"]) + 1):
            if spans and spans[-1][2] == rec_fn(n, dim=D):
                spans[-1][1] = n
            else:
                spans.append([n, n, rec_fn(n, dim=D)])
        text = "; ".join(f"`{c}` for {a} to {b} steps" if b < max(R["nfes"]) else f"`{c}` from {a} steps on"
                         for a, b, c in spans)
        rules.setdefault(text, []).append(D)
    rule = (next(iter(rules)) if len(rules) == 1 else
            "; ".join(f"for {dim_label(ds)}: {text}" for text, ds in rules.items())) + " (predictor, spacing[, options])"
    call = ("recommended_sampler(n, dim=D)" if scale == 1.0 else f"recommended_sampler(n, data_std={scale:g}, dim=D)")
    w(f"`sample(sde, score_fn, shape, steps=n)` without a predictor runs `sampling.{call}`: "
      f"{rule}; one robust choice per range "
      "of budgets, not the winner of each. Its standing in this run, at each budget (steps = NFE − 1, the last "
      "evaluation being Tweedie's step; steps = NFE below "
      f"{getattr(sampling, 'AUTO_DENOISE_MIN_STEPS', 1)} steps, where `recommended_denoise` takes no Tweedie step): its median (mean) rank among all samplers and its place among ours by median "
      "rank, the same ranked on its own error (net of the ε limit), on how many mixtures it is at least as accurate as "
      "the best peer on both metrics (|dlogp|, then |dlogp| net of the ε limit, each with SW2; issue 10's target (2) "
      "for the default itself), and its collapses (runs with |dlogp| > 1 nat or NaN), next to the best of ours and the "
      "old default (reverse diffusion on the uniform grid). Chapter 9 ('The "
      "default of `sample`') explains the choice; VE and sub-VP are checked there.\n")
    own = {}                                       # the default's own end time per budget (sampling.recommended_eps)
    for (dn_, sn_, T_), c_ in cells.items():
        if sn_ == DEFAULT_NAME and c_.eps == c_.eps:
            own[T_] = c_.eps
    if any(e != EPS for e in own.values()):
        w("The default also picks its end time (`sampling.recommended_eps`, `sample(..., eps=None)`): here ε = "
          + ", ".join(f"{eps_tex(e)} at NFE {', '.join(str(T_) for T_ in sorted(own) if own[T_] == e)}"
                      for e in sorted(set(own.values()), reverse=True))
          + f", while the other samplers of ours and rk4 stop at {eps_tex()}. Its |dlogp| is still measured paired "
          "with the exact map to that ε (the ε limit plus the paired gap: the same expectation, with less noise), "
          "and its own error ('net') against the limit at its own ε.\n")
    w("| NFE | default | rank | place among ours | rank net of ε limit | place net | vs best peer | vs best peer, net "
      "| collapses | best of ours (rank) | old default: rank | old default: collapses |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for T in R["nfes"]:
        s, sn_ = summ[T], summ_net[T]
        d = next((x for x in ours if x.name == DEFAULT_NAME), None)   # the default, run as a sampler of its own
        if d is None:                                                 # (a dump from before: the sampler it names)
            d = by_key.get(tuple(rec_fn(max(1, T - 1))[:2]))
        # the steps it ran (1 NFE per step + Tweedie's, or no Tweedie step below sampling.AUTO_DENOISE_MIN_STEPS)
        steps = next((r.steps for r in R["recs"] if r.sampler == DEFAULT_NAME and r.T == T and r.steps > 0),
                     max(1, T - 1))
        no_tweedie = "" if getattr(sampling, "recommended_denoise", lambda n: True)(steps) else ", no Tweedie step"
        choices = rec_dims(steps)

        def fmt(rec):
            return f"{rec[0]} [{SHORT.get(rec[1], rec[1])}]" + ("".join(f", {k}={v}" for k, v in rec[2].items())
                                                               if len(rec) > 2 else "")
        what = (fmt(choices[0][0]) if len(choices) == 1 else
                " / ".join(f"{fmt(c)} ({dim_label(ds)})" for c, ds in choices))
        if d is None or d.name not in s["stats"]:
            continue
        place = 1 + s["ours_order"].index(d.name) if d.name in s["ours_order"] else "–"
        place_net = 1 + sn_["ours_order"].index(d.name) if d.name in sn_["ours_order"] else "–"
        c, n = collapses(d.name, T)
        best = s["rec"]
        o_rank = rank(s, old.name) if old else "–"
        o_c = "{} of {}".format(*collapses(old.name, T)) if old else "–"
        w(f"| {T} | {bold(d.name)}: {what} ({steps} steps{no_tweedie}) | {rank(s, d.name)} | {place} of {len(s['ours_order'])} | "
          f"{rank(sn_, d.name)} | {place_net} | {vs_peer(d.name, T, 'err')} | {vs_peer(d.name, T, 'net')} | {c} of {n} | "
          f"{bold(best)} ({rank(s, best)}) | {o_rank} | {o_c} |")
    w("")


def targets(R) -> dict:
    nfes, summ, preps, cells, suite = R["nfes"], R["summary"], R["preps"], R["cells"], R["suite"]
    fam = {s.name: s.family for s in R["samplers"]}
    dn = [d.name for d in suite]
    lines, blocks = [], []
    unreach = [d for d in dn if abs(preps[d].limit) > 0.03]
    # (1) NFE 10
    if 10 in nfes and summ[10]["rec"]:
        s10 = summ[10]
        rec = s10["rec"]
        t = s10["t1"][rec]
        ours = [sn for sn in s10["t1"] if fam[sn] == "ours"]
        orc = orc_net = 0
        for d in dn:
            p = preps[d]
            okd = okn = False
            for sn in ours:
                c = cells.get((d, sn, 10))
                if c is None or c.failed or c.sw2 > p.sw2_floor[0] + 2 * p.sw2_floor[1]:
                    continue
                okd |= c.err <= 0.03
                okn |= c.net <= 0.03
            orc += okd
            orc_net += okn
        met = t["raw"] >= 0.8
        lines.append(f"NFE 10, mean |dlogp| ≤ 0.03 nats and SW2 ≤ floor + 2 std on ≥ 80 % of the suite: "
                     f"**{'met' if met else 'not met'}**: our recommended sampler ({_short(rec)}) on {_pct(t['raw'])} "
                     f"({_pct(t['net'])} net of the ε limit); the best of ours chosen per distribution on "
                     f"{_pct(orc / len(dn))} ({_pct(orc_net / len(dn))} net). The ε = {eps_tex()} limit alone exceeds "
                     f"0.03 nats on {len(unreach)} of {len(dn)} distributions ({', '.join(unreach) or 'none'}).")
        b = ["### (1) NFE 10: |dlogp| ≤ 0.03 nats and SW2 within floor + 2 std on ≥ 80 % of the suite\n",
             f"Our recommended sampler at NFE 10: {rec}. Per distribution (dlogp ± SE; SW2 against floor mean + "
             "2 std; 'net' = |dlogp − ε limit| ≤ 0.03):\n",
             "| distribution | dlogp ± SE | ε limit | SW2 | floor + 2 std | ok | ok net |", "|---|---|---|---|---|---|---|"]
        for d in dn:
            c, p = cells.get((d, rec, 10)), preps[d]
            if c is None:
                continue
            lim = p.sw2_floor[0] + 2 * p.sw2_floor[1]
            if c.failed:
                b.append(f"| {d} | fail ({c.msg}) | {p.limit:+.4f} | – | {lim:.4f} | no | no |")
                continue
            ok = c.err <= 0.03 and c.sw2 <= lim
            okn = c.net <= 0.03 and c.sw2 <= lim
            b.append(f"| {d} | {c.signed:+.4f} ± {c.err_se:.4f} | {p.limit:+.4f} | {c.sw2:.4f} | {lim:.4f} | "
                     f"{'yes' if ok else '**no**'} | {'yes' if okn else '**no**'} |")
        b.append(f"\nVerdict: **{'met' if met else 'not met'}** ({_pct(t['raw'])} of the suite; net of the ε limit "
                 f"{_pct(t['net'])}; best of ours per distribution {_pct(orc / len(dn))}).\n")
        blocks.append("\n".join(b))
    # (2) NFE >= 10 vs the best peer
    hi = [T for T in nfes if T >= 10 and summ[T]["rec"]]
    if hi:
        rows = ["### (2) Every NFE ≥ 10: at least as accurate as the best peer on both metrics on ≥ 90 % of the suite\n",
                "| NFE | our recommended | vs best peer: both | |dlogp| | SW2 | oracle both | met (recommended)? "
                "| net of ε limit: ours (ranked net) vs best peer, both | oracle, net |",
                "|---|---|---|---|---|---|---|---|---|"]
        allmet, allorc = True, True
        per = []
        for T in hi:
            s = summ[T]
            wb = s["win"].get("best peer", {})
            met = wb.get("both", 0) >= 0.9
            allmet &= met
            allorc &= s["oracle"].get("both", 0) >= 0.9
            per.append(f"{T}: {_pct(wb.get('both'))}")
            sn_ = R["summary_net"][T]
            rows.append(f"| {T} | {s['rec']} | {_pct(wb.get('both'))} | {_pct(wb.get('err'))} | {_pct(wb.get('sw2'))} "
                        f"| {_pct(s['oracle'].get('both'))} | {'yes' if met else '**no**'} "
                        f"| {_short(sn_['rec'])}: {_pct(sn_['win'].get('best peer', {}).get('both'))} "
                        f"| {_pct(sn_['oracle'].get('both'))} |")
        # where the recommended sampler loses to the best peer, and to which peer
        peer_names = [sn.name for sn in R["samplers"] if sn.family == "peer"]
        loss_lines = []
        for T in [5] + hi if 5 in nfes and summ[5]["rec"] else hi:
            rec = summ[T]["rec"]
            lost = []
            for d in dn:
                o = cells.get((d, rec, T))
                pcs = [cells[(d, q, T)] for q in peer_names if (d, q, T) in cells]
                if o is None or not pcs:
                    continue
                for m, lab in (("err", "|dlogp|"), ("sw2", "SW2")):
                    bp = min(pcs, key=lambda c: (c.failed, _val(c, m)))
                    if not at_least_as_good(o, bp, m):
                        ov = "fail" if o.failed else f"{_val(o, m):.3g}"
                        lost.append(f"{d} {lab} {ov} vs {_val(bp, m):.3g} ({_short(bp.sampler)})")
            if lost:
                loss_lines.append(f"- NFE {T} ({_short(rec)}): " + "; ".join(lost))
        if loss_lines:
            rows.append("\nWhere our recommended sampler is not at least as accurate as the best peer (ours vs the "
                        "best peer on that metric):\n")
            rows += loss_lines
        rows.append(f"\nVerdict: **{'met' if allmet else 'not met'}** for the one recommended sampler per NFE; "
                    f"{'met' if allorc else 'not met'} for the best of ours chosen per distribution and metric.\n")
        blocks.append("\n".join(rows))
        lines.append(f"Every NFE ≥ 10, at least as accurate as the best peer on both metrics on ≥ 90 % of the suite: "
                     f"**{'met' if allmet else 'not met'}** (our recommended sampler vs the best peer per distribution: "
                     + ", ".join(per) + f"; best of ours per distribution: {'met' if allorc else 'not met'}).")
    # (3) NFE 5
    if 5 in nfes and summ[5]["rec"]:
        s = summ[5]
        rec, best = s["rec"], s["best"]
        st = s["stats"]
        peers_sorted = [sn for sn in s["order"] if fam[sn] == "peer"]
        bp = peers_sorted[0] if peers_sorted else None
        wb = s["win"].get("best peer", {})
        txt = (f"NFE 5: our best is {_short(rec)} (median rank {st[rec]['median']:.1f}"
               + (f"; the best peer, {bp}: {st[bp]['median']:.1f}" if bp else "") + f"); overall best: {best.replace('ours ', '')}. "
               f"It is at least as accurate as the best peer on both metrics on {_pct(wb.get('both'))} of the suite "
               f"(|dlogp| {_pct(wb.get('err'))}, SW2 {_pct(wb.get('sw2'))}); within 0.03 nats and the SW2 floor on "
               f"{_pct(s['t1'][rec]['raw'])}" + (f" (the best peer: {_pct(s['t1'][bp]['raw'])})" if bp else "") + ".")
        lines.append(txt)
        blocks.append("### (3) NFE 5: where we stand\n\n" + txt + "\n")
    return dict(lines=lines, blocks=blocks)


def observations(R) -> list[str]:
    nfes, cells, preps, suite, samplers = R["nfes"], R["cells"], R["preps"], R["suite"], R["samplers"]
    summ = R["summary"]
    names = [s.name for s in samplers]
    spec = {s.name: s for s in samplers}
    dn = [d.name for d in suite]
    out = []
    fails = {}
    for (d, sn, T), c in cells.items():
        if c.failed:
            fails.setdefault(sn, []).append(f"{d}@{T}")
    if fails:
        out.append("**Failures** (NaN/inf samples or an error in some seed): " + "; ".join(
            f"{sn}: {', '.join(sorted(v, key=lambda s: (s.split('@')[0], int(s.split('@')[1]))))}"
            for sn, v in fails.items()) + ".\n")
        msgs = sorted({c.msg for c in cells.values() if c.failed})
        out.append("Messages: " + "; ".join(f"`{m}`" for m in msgs[:6]) + ".\n")
    else:
        out.append("No run produced NaN/inf samples or an error.\n")
    big = {}
    for (d, sn, T), c in cells.items():
        if T >= 10 and not c.failed and c.err > 1:
            big.setdefault(sn, []).append(c)
    if big:
        out.append("**Collapses**: runs with |dlogp| > 1 nat at NFE ≥ 10 (of the distribution × NFE cells at NFE ≥ 10 "
                   "the sampler ran), the worst, and the largest NFE at which one happens:\n")
        out.append("| sampler | cells | too spread / too concentrated | worst | largest NFE |")
        out.append("|---|---|---|---|---|")
        tot = {sn: sum(1 for (d, s2, T) in cells if s2 == sn and T >= 10) for sn in big}
        for sn, cs in sorted(big.items(), key=lambda kv: -len(kv[1])):
            worst = max(cs, key=lambda c: c.err)
            neg = sum(c.signed < 0 for c in cs)
            out.append(f"| {_short(sn)} | {len(cs)} of {tot[sn]} | {neg} / {len(cs) - neg} | {worst.dist}@{worst.T}: "
                       f"{worst.signed:+.3g} | {max(c.T for c in cs)} |")
        clean = [_short(sn) for sn in names if sn not in big and any(k[1] == sn and k[2] >= 10 for k in cells)]
        out.append("\nNo such run: " + (", ".join(clean) if clean else "none") + ".\n")
    # the grid that wins, per predictor
    rows = []
    for key in dict.fromkeys(s.key for s in samplers if s.family == "ours"):
        grids = [s.name for s in samplers if getattr(s, "key", None) == key]
        best = []
        for T in nfes:
            st = summ[T]["stats"]
            cand = [g for g in grids if g in st]
            if not cand:
                best.append("–")
                continue
            g = min(cand, key=lambda g: (st[g]["median"], st[g]["mean"]))
            best.append(f"{spec[g].spacing} ({st[g]['median']:.1f})")
        rows.append(f"| {spec[grids[0]].label} | " + " | ".join(best) + " |")
    if rows:
        out.append("**Which time grid wins** for each of our predictors (best median rank among its grids):\n")
        out.append("| predictor | " + " | ".join(str(T) for T in nfes) + " |")
        out.append("|---|" + "---|" * len(nfes))
        out += rows
        out.append("")
    # non-monotone convergence of deterministic samplers
    nm = {}
    for sn in names:
        if not spec[sn].paired:
            continue
        for d in dn:
            seq = [cells[(d, sn, T)] for T in nfes if (d, sn, T) in cells]
            for a, b in zip(seq, seq[1:]):
                if a.failed or b.failed or b.nfe <= a.nfe:
                    continue
                if abs(b.pd) > abs(a.pd) + max(0.01, 3 * math.hypot(a.pd_se, b.pd_se)):
                    nm.setdefault(sn, []).append((abs(b.pd) - abs(a.pd), f"{d}: {a.pd:+.3f} @{a.T} → {b.pd:+.3f} @{b.T}"))
    if nm:
        n_all = sum(len(v) for v in nm.values())
        out.append(f"**Non-monotone convergence** of the deterministic samplers (the paired dlogp, i.e. the error "
                   f"against the exact map, grows by > 0.01 nats and 3 SE from one NFE budget to the next): {n_all} "
                   "cases; per sampler, the count and the largest jump:\n")
        for sn, v in sorted(nm.items(), key=lambda kv: -len(kv[1])):
            out.append(f"- {_short(sn)}: {len(v)}; {max(v)[1]}")
        out.append("")
    uni3 = [sn for sn in names if spec[sn].family == "ours" and spec[sn].spacing == "uniform" and "3M" in sn]
    if uni3:
        from sde_diffusion.sde import VPSDE as _VP
        vp, parts = _VP(), []
        for T in nfes:
            steps = spec[uni3[0]].per_step and max(1, (T - spec[uni3[0]].extra) // spec[uni3[0]].per_step)
            if steps < 3:
                continue
            ts = sampling.sampling_times(vp, steps, EPS, "uniform", dtype=torch.float64)
            a, sg = vp.marginal_coeffs(ts)
            lam = (a / sg).log()
            parts.append(f"{steps} steps: {(lam[-1] - lam[-2]).item() / (lam[-2] - lam[-3]).item():.1f}")
        u = uni3[0]
        seq = ", ".join(f"{c.T}: {c.signed:+.2f}" for c in (cells.get(("ring", u, T)) for T in nfes)
                        if c is not None and not c.failed)
        out.append("On the uniform grid in t the last step is long in log-SNR: its length over the previous step's "
                   "length, by number of steps: " + ", ".join(parts) + ". A multistep predictor extrapolates across "
                   f"that jump. {_short(u)}'s `lower_order_final` lowers the order of the last steps only in runs of "
                   "fewer than 15 steps (diffusers' rule), so from 15 steps on it takes a full-order last step over "
                   "it: the likely cause of its collapse at NFE 25 and its slow recovery (dlogp on the ring by NFE: "
                   f"{seq}). The logsnr and edm grids have no such jump.\n")
    fin = R.get("diffusers_last")
    if fin:
        out.append("diffusers' multistep schedulers (DPM++, UniPC; 'linspace' timesteps) take their last step from "
                   "timestep tᵢ straight to x̂₀ (σ = 0): continuous t of that last timestep, by NFE: " + ", ".join(
                       f"{T}: {t:.3g}" for T, t in fin.items()) + f" (ours and rk4 stop at ε = {EPS:g} and then take "
                   "Tweedie's step). On sharp components a larger last t over-concentrates x̂₀ (a posterior mean), which can show as "
                   "a positive dlogp that shrinks only slowly with NFE.\n")
    lim = [f"{d} ({preps[d].limit:+.3f})" for d in dn if abs(preps[d].limit) > 0.03]
    if lim:
        from sde_diffusion.sde import VPSDE as _VP
        sig = _VP().marginal_coeffs(torch.tensor([EPS], dtype=torch.float64))[1].item()
        times = "twice" if round(0.02 / sig) == 2 else f"{0.02 / sig:.0f} times"
        out.append(f"**ε floor**: the converged ε = {eps_tex()} + Tweedie method itself misses 0.03 nats on "
                   + ", ".join(lim) + f": sharp components (axis std ≈ 0.02, about {times} σ(ε) ≈ {sig:.3g}) "
                   "are over-concentrated by "
                   "Tweedie's posterior mean (variance factor s²/(s² + σ(ε)²) per axis). A smaller ε (or no final "
                   "denoising and a smaller ε) would be needed there; no sampler setting of the step count fixes it.\n")
    # time per call
    tw = []
    for s in samplers:
        v = [c.wall / max(c.nfe, 1) for c in cells.values() if c.sampler == s.name and c.T == 100 and not c.failed
             and preps[c.dist].D == 2]
        if v:
            tw.append((s.name, median(v)))
    if tw:
        out.append("Median wall time per NFE at NFE 100 on the 2-D distributions (score call included; load-"
                   "dependent): " + ", ".join(f"{_short(n)} {t * 1e3:.2f} ms" for n, t in tw) + ".\n")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------------------------------
def _nfe_axis(ax, nfes):
    "Log x axis labelled at the NFE budgets only."
    from matplotlib.ticker import NullFormatter, NullLocator
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(nfes, [str(T) for T in nfes])


def plot(out: Path, R: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfes, summ, cells, preps, suite, samplers = (R["nfes"], R["summary"], R["cells"], R["preps"], R["suite"],
                                                  R["samplers"])
    fam = {s.name: s.family for s in samplers}
    peer_n = [s.name for s in samplers if s.family == "peer"]
    # our samplers worth a line: in our top 2 at some NFE (ranked on |dlogp| or net of the eps limit)
    top = []
    for T in nfes:
        for sn in summ[T]["ours_order"][:2] + R["summary_net"][T]["ours_order"][:1]:
            if sn not in top:
                top.append(sn)
    tab10 = plt.get_cmap("tab10").colors
    dark = plt.get_cmap("Dark2").colors
    style = {}
    for i, sn in enumerate(top):
        style[sn] = dict(color=tab10[i % 10], ls="-", marker="os^vD<>phX"[i % 10], lw=2.0, ms=5)
    for i, sn in enumerate(peer_n):
        style[sn] = dict(color=dark[i % len(dark)], ls="--", marker="PXd*hs"[i % 6], lw=1.4, ms=6, mfc="white")

    fig = plt.figure(figsize=(22, 14))
    gs = fig.add_gridspec(2, 4, height_ratios=(1, 1), hspace=0.3, wspace=0.26, bottom=0.12, top=0.93, left=0.05,
                          right=0.98)
    ax_rank = fig.add_subplot(gs[0, 0])
    ax_win = fig.add_subplot(gs[0, 1])
    ax_t1 = fig.add_subplot(gs[0, 2])
    ax_txt = fig.add_subplot(gs[0, 3])
    # (a) median rank
    others = [s.name for s in samplers if s.family == "ours" and s.name not in top]
    for sn in others:
        xs = [T for T in nfes if sn in summ[T]["stats"]]
        ax_rank.plot(xs, [summ[T]["stats"][sn]["median"] for T in xs], color="0.75", lw=0.8, zorder=1)
    for sn in top + peer_n:
        xs = [T for T in nfes if sn in summ[T]["stats"]]
        if xs:
            ax_rank.plot(xs, [summ[T]["stats"][sn]["median"] for T in xs], label=_short(sn), zorder=3, **style[sn])
    ax_rank.plot([], [], color="0.75", lw=0.8, label="our other samplers")
    _nfe_axis(ax_rank, nfes)
    ax_rank.set_ylim(bottom=0.8)
    ax_rank.set_xlabel("NFE")
    ax_rank.set_ylabel("median noise-aware rank over the suite (1 = best)")
    ax_rank.set_title("Median rank vs NFE (lower is better)", fontsize=11)
    ax_rank.grid(True, alpha=0.3)
    # (b) win rates
    for sn in peer_n:
        ys = [summ[T]["win"].get(sn, {}).get("both", math.nan) for T in nfes]
        ax_win.plot(nfes, [100 * y for y in ys], label=f"vs {_short(sn)}", **style[sn])
    ys = [summ[T]["win"].get("best peer", {}).get("both", math.nan) for T in nfes]
    ax_win.plot(nfes, [100 * y for y in ys], color="k", lw=2.6, marker="o", label="vs the best peer")
    ax_win.axhline(90, color="crimson", ls=":", lw=1.5, label="target: 90 % (NFE ≥ 10)")
    _nfe_axis(ax_win, nfes)
    ax_win.set_ylim(-3, 103)
    ax_win.set_xlabel("NFE")
    ax_win.set_ylabel("% of the suite: ours at least as accurate (2 SE)")
    ax_win.set_title("Win rate of our recommended sampler (both metrics)", fontsize=11)
    ax_win.grid(True, alpha=0.3)
    ax_win.legend(fontsize=8, loc="lower right")
    # (c) fraction within 0.03 nats and the SW2 floor
    for sn in top + peer_n:
        ys = [summ[T]["t1"].get(sn, {}).get("raw", math.nan) for T in nfes]
        ax_t1.plot(nfes, [100 * y for y in ys], **style[sn])
    reach = 100 * sum(abs(preps[d.name].limit) <= 0.03 for d in suite) / len(suite)
    ax_t1.axhline(reach, color="0.4", ls="-.", lw=1.3, label=f"reachable at ε = {eps_plain()} ({reach:.0f} %)")
    own = getattr(sampling, "AUTO_EPS", ()) if OWN_EPS else ()   # the default ends nearer 0 from these step counts
    if own and own[0][0] + 1 <= max(nfes):
        ax_t1.text(1.1 * (own[0][0] + 1), reach + 1.5, f"the default ends nearer 0\nfrom NFE {own[0][0] + 1} on",
                   fontsize=7, color="0.3", va="bottom")
    ax_t1.axhline(80, color="crimson", ls=":", lw=1.5, label="target: 80 % at NFE 10")
    _nfe_axis(ax_t1, nfes)
    ax_t1.set_ylim(-3, 103)
    ax_t1.set_xlabel("NFE")
    ax_t1.set_ylabel("% of the suite")
    ax_t1.set_title("|dlogp| ≤ 0.03 nats and SW2 ≤ floor + 2 std", fontsize=11)
    ax_t1.grid(True, alpha=0.3)
    ax_t1.legend(fontsize=8, loc="upper left")
    # (d) the recommendation as text
    ax_txt.axis("off")
    lines = ["At NFE n, use:", ""]
    for T in nfes:
        s = summ[T]
        if s["rec"] is None:
            continue
        lines.append(f"{T:>4}: {_short(s['best'])}")
        if s["best"] != s["rec"]:
            lines.append(f"        best of ours: {_short(s['rec'])}")
        sn_ = R["summary_net"][T]
        if sn_["best"] != s["best"]:
            lines.append(f"        ranked net of the ε limit: {_short(sn_['best'])}")
    lines += ["", "(best median noise-aware rank over the", " suite on |dlogp| and SW2; dfs = diffusers)"]
    ax_txt.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=10.5,
                transform=ax_txt.transAxes)
    h, lab = ax_rank.get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=6, fontsize=10, frameon=False,
               title="samplers (solid: sde_diffusion, our best 2 at some NFE; dashed: peers)", title_fontsize=10.5)
    # (e) signed dlogp vs NFE for representative distributions (symlog: the sign says too spread / too concentrated)
    reps = [d for d in ("ring", "checkerboard", "gmm8d-3", "gmm64d-0") if d in preps]
    reps += [d.name for d in suite if d.name not in reps][: max(0, 4 - len(reps))]
    clip = 100.0
    for i, dname in enumerate(reps[:4]):
        ax = fig.add_subplot(gs[1, i])
        p = preps[dname]
        ax.axhspan(-0.03, 0.03, color="crimson", alpha=0.12, lw=0, label="|dlogp| ≤ 0.03 nats")
        ax.axhline(p.limit, color="0.3", ls="-.", lw=1.3, label=f"ε limit ({p.limit:+.3f})")
        for sn in top + peer_n:
            xs = [T for T in nfes if (dname, sn, T) in cells and not cells[(dname, sn, T)].failed]
            if xs:
                ax.plot([cells[(dname, sn, T)].nfe for T in xs],
                        [max(-clip, min(clip, cells[(dname, sn, T)].signed)) for T in xs], **style[sn])
        _nfe_axis(ax, nfes)
        ax.set_yscale("symlog", linthresh=1e-2, linscale=0.6)
        ax.set_ylim(-clip * 1.5, clip * 1.5)
        ax.set_xlabel("NFE")
        ax.set_ylabel("dlogp (nats): < 0 too spread, > 0 too concentrated")
        ax.set_title(f"{dname} (D = {p.D}): dlogp vs NFE (clipped at ±{clip:g})", fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Samplers over a suite of {len(suite)} Gaussian mixtures (exact scores, VP SDE, float32, CPU"
                 + (", --quick smoke run" if R["args"].quick else "") + "): which sampler to use at which NFE",
                 fontsize=14)
    fig.savefig(out / "suite.png", dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
def _light(s):
    return SimpleNamespace(name=s.name, family=s.family, paired=s.paired, stochastic=s.stochastic, key=s.key,
                           spacing=s.spacing, per_step=s.per_step, extra=s.extra, label=s.label)


def finish(out: Path, R: dict):
    spec = {s.name: s for s in R["samplers"]}
    dn = [d.name for d in R["suite"]]
    R["cells"] = aggregate(R["recs"], R["preps"], spec)
    # rank over the samplers run on the distributions at hand
    R["summary"] = summarize(R["cells"], dn, R["samplers"], R["nfes"], R["preps"])
    R["summary_net"] = summarize(R["cells"], dn, R["samplers"], R["nfes"], R["preps"], metrics=("net", "sw2"))
    R["targets"] = targets(R)
    R["observations"] = observations(R)
    write_report(out, R)
    plot(out, R)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 distributions, NFE 5/10/25, 2 seeds, small n, "
                    "ours on one grid each")
    ap.add_argument("--out", default=None, help="folder for SUITE.md and suite.png (default: bench/; with --quick "
                    "a temporary folder, so that a smoke run never overwrites the full report)")
    ap.add_argument("--seed", type=int, default=0, help="base seed of the reference sets and floors")
    ap.add_argument("--seeds", type=int, default=None, help=f"seeds per cell (default {SEEDS}; 2 with --quick)")
    ap.add_argument("--nfes", default=None, help="comma-separated NFE budgets (default: " + ",".join(map(str, NFES)) + ")")
    ap.add_argument("--n", default=None, help="samples per run by dimension, e.g. '2=3000,8=2000,64=1000'")
    ap.add_argument("--dists", default=None, help="comma-separated distribution names to run (default: all)")
    ap.add_argument("--only", default=None, help="comma-separated substrings: run only the samplers they match")
    ap.add_argument("--top64", type=int, default=4, help="64-D: run only our samplers that ranked in our top k at some "
                    "NFE on the lower dimensions (0: all of ours)")
    ap.add_argument("--quad64-default", action="store_true", help="also run the default with the time-3/2 rule "
                    "off (`sampling.AUTO_THREEHALVES_MIN_DIM` out of reach): UniPC-2 on the time-quadratic grid in "
                    "64-D below 19 steps, as before that rule (bench/bench_order_hd.py)")
    ap.add_argument("--ours64", default=None, help="64-D: run only these of our samplers (comma-separated full names, "
                    "e.g. 'ours UniPC [logsnr],ours Heun [edm]') instead of the --top64 selection, e.g. to repeat a "
                    "run's selection on a subset of its NFEs")
    ap.add_argument("--eps", type=float, default=None, help=f"end time of ours, torchdiffeq rk4 and the exact "
                    f"flow map (then Tweedie's step), and of the eps limit (default {DEFAULT_EPS:g}, and `sample`'s "
                    "default to its own `recommended_eps`; given, the default runs to it as well); diffusers' "
                    "schedulers keep their own grid")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every distribution by this (data std `scale` "
                    "instead of 1); our default is then told it (`sample(..., data_std=scale)`) and also run without "
                    "it ('ours default, no data_std'); bench/bench_scale.py runs several")
    ap.add_argument("--dims", default=None, help="comma-separated dimensions: run generated mixtures there instead of "
                    "the shipped suite, one per --profiles entry and dimension (bench/bench_dims.py)")
    ap.add_argument("--profiles", default="sharp,far,broad,aniso,broad+sharp,aniso+far",
                    help="with --dims: comma-separated tag sets of the generated mixtures, tags joined by '+'")
    ap.add_argument("--families", default=None, help="comma-separated names of `FAMILIES` (shapes outside the "
                    "generator: " + ", ".join(FAMILIES) + "): run those instead of the shipped suite "
                    "(bench/bench_families.py)")
    ap.add_argument("--idx-offset", type=int, default=30, help="with --dims: index of the first mixture per dimension "
                    "(the shipped suite uses 0-5)")
    ap.add_argument("--map-rtol", type=float, default=1e-8, help="tolerance of the exact flow map (float64 dopri5)")
    ap.add_argument("--elogp-n", type=int, default=0, help="exact samples for E[log p0] (default by dimension)")
    ap.add_argument("--dump", default=None, help="also pickle the raw runs to this file")
    ap.add_argument("--report-from", default=None, help="skip the runs: rewrite SUITE.md and suite.png from a --dump")
    args = ap.parse_args(argv)
    if args.out is None:
        import tempfile
        args.out = tempfile.mkdtemp(prefix="bench_suite_quick_") if args.quick else str(HERE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_from:
        R = pickle.loads(Path(args.report_from).read_bytes())
        R["rendered_from"] = args.report_from
        set_eps(getattr(R["args"], "eps", None) or DEFAULT_EPS)   # the eps the dump was measured at (before --eps: 1e-3)
        finish(out, R)
        print(f"rewrote {out / 'SUITE.md'} and {out / 'suite.png'}")
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    global OWN_EPS
    OWN_EPS = args.eps is None                     # `sample`'s default to its own end time unless --eps is given
    try:
        set_eps(DEFAULT_EPS if args.eps is None else args.eps)
    except ValueError as e:
        ap.error(str(e))
    seeds = list(range(1000, 1000 + (args.seeds or (2 if args.quick else SEEDS))))
    nfes = tuple(int(v) for v in args.nfes.split(",")) if args.nfes else (QUICK_NFES if args.quick else NFES)
    n_by_D = dict(N_QUICK if args.quick else N_FULL)
    if args.n:
        for kv in args.n.split(","):
            k, v = kv.split("=")
            n_by_D[int(k)] = int(v)
    t_start = time.perf_counter()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    stamp = lambda: f"[{(time.perf_counter() - t_start) / 60:5.1f} min]"  # noqa: E731
    load_before = bs.loadavg()
    sha = hashlib.sha1(Path(sampling.__file__).read_bytes()).hexdigest()[:10]

    if not (math.isfinite(args.scale) and args.scale > 0):
        ap.error(f"--scale must be a positive number, got {args.scale}")
    global DATA_SCALE, QUAD64_DEFAULT
    DATA_SCALE = args.scale
    QUAD64_DEFAULT = args.quad64_default
    dims = [int(v) for v in args.dims.split(",")] if args.dims else None
    profiles = [tuple(t for t in p.split("+") if t) for p in args.profiles.split(",")]
    known = {"sharp", "far", "broad", "aniso"}
    if dims and (min(dims) < 2 or any(not set(p) <= known for p in profiles)):
        ap.error(f"--dims must be >= 2 and --profiles tags among {sorted(known)}, got {args.dims!r}, {args.profiles!r}")
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    if families and (dims or any(f not in FAMILIES and not re.fullmatch(r"spec\d+d-\d+|powerlaw\d+d", f) for f in families)):
        ap.error(f"--families takes names among {', '.join(FAMILIES)}, specDd-i, powerlawDd and excludes --dims, got "
                 f"{args.families!r}")
    suite = build_suite(args.quick, args.scale, dims, profiles, args.idx_offset, families)
    if args.dists:
        keep = [k.strip() for k in args.dists.split(",")]
        suite = [d for d in suite if d.name in keep]
    notes = []
    ours = discover_ours(notes)
    if args.quick:   # one grid each: logsnr for the deterministic predictors, uniform for the stochastic ones
        ours = [s for s in ours
                if s.spacing == ("uniform" if s.stochastic else "logsnr") or s.name in (DEFAULT_NAME, UNHINTED_NAME, QUAD64_NAME)]
    samplers = ours + peers()
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        samplers = [s for s in samplers if any(k in s.name for k in keys)]
    if args.ours64 and not args.quick:
        want = [k.strip() for k in args.ours64.split(",") if k.strip()]
        ours_names = {s.name for s in samplers if s.family == "ours"}
        bad = [k for k in want if k not in ours_names]
        if bad:
            ap.error(f"--ours64: not among our samplers of this run: {bad}")
        sel64 = want
    else:
        sel64 = None
    probe_costs(samplers, log)
    found = list(getattr(sampling, "PREDICTORS", {}))
    log(f"{stamp()} {len(suite)} distributions, {len(samplers)} samplers ({len(ours)} ours), NFE {nfes}, "
        f"seeds {seeds}, n {n_by_D}, eps {EPS:g}; predictors found: {found}")
    for nt in notes:
        log("  note: " + nt)

    recs, preps, dist_s, load_during = [], {}, {}, {}
    t_score_64 = None
    order = sorted(suite, key=lambda d: d.D)            # low dimensions first: 64-D may use their ranking
    for d in order:
        a = time.perf_counter()
        n = n_by_D.get(d.D, min(n_by_D.values()))
        log(f"{stamp()} {d.name}: D={d.D} K={d.gm.K} n={n}")
        prep, P, ctx = prepare(d, n, seeds, args, log)
        preps[d.name] = prep
        log(f"    E[log p0] {prep.elogp:.4f}, sd {prep.sd_logp:.3f}; SW2 floor {prep.sw2_floor[0]:.4f} ± "
            f"{prep.sw2_floor[1]:.4f}; eps limit {prep.limit:+.4f} ± {prep.limit_se:.4f}; "
            f"t_score {prep.t_score * 1e3:.2f} ms; prep {prep.seconds:.1f} s")
        run_here = samplers
        if d.D >= 64 and (args.top64 or sel64) and not args.quick:
            t_score_64 = prep.t_score
            if sel64 is None:
                done = [x.name for x in order if x.D < 64 and x.name in preps]
                if done:
                    spec = {s.name: s for s in samplers}
                    cl = aggregate(recs, preps, spec)
                    sm = summarize(cl, done, samplers, nfes, preps)
                    sel64 = []
                    for T in nfes:
                        for sn in sm[T]["ours_order"][: args.top64]:
                            if sn not in sel64:
                                sel64.append(sn)
                    log(f"    64-D: our samplers kept: {sel64}")
            if sel64 is not None:
                run_here = [s for s in samplers
                            if s.family == "peer" or s.name in sel64
                            or s.name in (DEFAULT_NAME, UNHINTED_NAME, QUAD64_NAME)]
        cache = {}
        for s in run_here:
            b = time.perf_counter()
            cell_recs = []
            for T in nfes:
                cell_recs += run_cell(s, P, prep, ctx, T, seeds, args, cache)
            recs += cell_recs
            by_T = {}
            for r in cell_recs:
                by_T.setdefault(r.T, []).append(r)
            summary = " ".join(
                f"{T}:" + ("fail" if any(r.err for r in rs) else
                           f"{sum((prep.limit + r.pd) if s.paired else r.dlogp for r in rs) / len(rs):+.3f}")
                for T, rs in by_T.items())
            log(f"    {s.name:34s} {time.perf_counter() - b:6.1f} s  dlogp {summary}")
        dist_s[d.name] = time.perf_counter() - a
        load_during[d.name] = bs.loadavg().split()[0]
        if args.dump:
            Path(args.dump + ".partial").write_bytes(pickle.dumps(dict(recs=recs, preps=preps)))

    total = time.perf_counter() - t_start
    info = bs.machine_info()
    diffusers_last = {}
    try:                                                 # where diffusers' multistep schedulers leave for x0_hat
        import diffusers
        tt, _ = bs._ddpm_time_table(bs.VPSDE())
        for T in nfes:
            sch = diffusers.DPMSolverMultistepScheduler()
            sch.set_timesteps(T)
            diffusers_last[T] = float(tt[int(sch.timesteps[-1])])
    except Exception as e:  # noqa: BLE001
        notes.append(f"could not read diffusers' last timesteps: {e!r}")
    R = dict(args=args, suite=suite, preps=preps, recs=recs, samplers=[_light(s) for s in samplers], nfes=nfes,
             info=info, sampling_sha1=sha, load_before=load_before, load_after=bs.loadavg(), load_during=load_during,
             total_s=total, dist_s=dist_s, n_by_D=n_by_D, notes=notes, found=found,
             spacings=tuple(getattr(sampling, "SPACINGS", ())), sel64=sel64, t_score_64=t_score_64, seeds=seeds,
             argv=list(sys.argv[1:] if argv is None else argv), diffusers_last=diffusers_last,
             cpu_s=time.process_time())
    if args.dump:
        Path(args.dump).write_bytes(pickle.dumps(R))
    finish(out, R)
    log(f"{stamp()} wrote {out / 'SUITE.md'} and {out / 'suite.png'} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
