"""Judging image samples: the Fréchet distance against closed forms and scipy, its invariances, the 1/n floor, the
digit classifier (accuracy, determinism), coverage and confidence under corruption, bad input, devices."""
import math

import pytest
import torch

from sde_diffusion.data import load_digits
from sde_diffusion.distances import NoiseFloor
from sde_diffusion.image_quality import (ClassifierReport, DigitClassifier, classifier_features, classifier_scores,
                                   confusion_matrix, frechet_distance, frechet_distance_gaussians, frechet_floor,
                                   frechet_floor_gaussian, gaussian_fit, memorization_test, random_shift, sample_quality,
                                   train_digit_classifier)


F64 = torch.float64


def _gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def _rotation(theta):
    return torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=F64)


def _random_cov(d, g, rank=None):
    A = torch.randn(d, rank or d, generator=g, dtype=F64)
    return A @ A.T / (rank or d)


@pytest.fixture(scope="module")
def trained():
    return train_digit_classifier(seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train"), load_digits("test")


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance

def test_fd_matches_the_2x2_closed_form_for_non_commuting_covariances():
    for k, (t_a, t_b) in enumerate(((0.3, -1.1), (0.0, 0.7), (1.2, 1.2 + 1e-3))):
        S_a = _rotation(t_a) @ torch.diag(torch.tensor([4.0, 0.25], dtype=F64)) @ _rotation(t_a).T
        S_b = _rotation(t_b) @ torch.diag(torch.tensor([1.0 + k, 9.0], dtype=F64)) @ _rotation(t_b).T
        mu_a, mu_b = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([2.0, -1.0 + k], dtype=F64)
        closed = ((mu_a - mu_b).square().sum() + S_a.trace() + S_b.trace()
                  - 2 * torch.sqrt((S_a @ S_b).trace() + 2 * torch.sqrt(S_a.det() * S_b.det()))).item()
        assert abs(frechet_distance_gaussians(mu_a, S_a, mu_b, S_b) - closed) < 1e-8


def test_fd_matches_the_commuting_form_and_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = _gen(0)
    d = 32
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    a, b = torch.rand(d, generator=g, dtype=F64) * 3, torch.rand(d, generator=g, dtype=F64) * 3
    got = frechet_distance_gaussians(torch.zeros(d, dtype=F64), (Q * a) @ Q.T, torch.ones(d, dtype=F64), (Q * b) @ Q.T)
    assert abs(got - (d + (a.sqrt() - b.sqrt()).square().sum().item())) < 1e-8
    # general covariances: the textbook route through scipy's sqrtm of the non-symmetric product
    S_a, S_b = _random_cov(d, g), _random_cov(d, g)
    mu_a, mu_b = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    covmean = scipy_linalg.sqrtm((S_a @ S_b).numpy()).real
    ref = ((mu_a - mu_b).square().sum() + S_a.trace() + S_b.trace()).item() - 2 * float(covmean.trace())
    assert abs(frechet_distance_gaussians(mu_a, S_a, mu_b, S_b) - ref) < 1e-8 * max(1.0, ref)


def test_fd_is_symmetric_nonnegative_zero_on_identical_sets_and_rotation_invariant():
    g = _gen(1)
    fa = torch.randn(400, 12, generator=g, dtype=F64) @ torch.randn(12, 12, generator=g, dtype=F64)
    fb = 0.3 + torch.randn(250, 12, generator=g, dtype=F64) @ torch.randn(12, 12, generator=g, dtype=F64)
    d = frechet_distance(fa, fb)
    assert d > 0 and abs(frechet_distance(fb, fa) - d) < 1e-10 * d
    assert 0.0 <= frechet_distance(fa, fa) < 1e-10
    few = torch.randn(5, 12, generator=g, dtype=F64)            # rank-deficient covariance
    assert 0.0 <= frechet_distance(few, few) < 1e-10
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=F64))
    c = torch.randn(12, generator=g, dtype=F64)
    assert abs(frechet_distance(fa @ Q.T + c, fb @ Q.T + c) - d) < 1e-10 * d
    # float32 features are computed in float64: the same answer
    assert abs(frechet_distance(fa.float(), fb.float()) - frechet_distance(fa.float().double(), fb.float().double())) < 1e-12 * d
    # it is the distance between the Gaussian fits
    assert frechet_distance(fa, fb) == frechet_distance_gaussians(*gaussian_fit(fa), *gaussian_fit(fb))


def test_gaussian_fit_is_mean_and_unbiased_covariance():
    x = torch.randn(50, 3, generator=_gen(2), dtype=F64)
    mu, cov = gaussian_fit(x)
    torch.testing.assert_close(mu, x.mean(0))
    torch.testing.assert_close(cov, torch.cov(x.T))


def test_floor_formula_matches_gaussian_simulation():
    g = _gen(3)
    d, n, R = 16, 300, 200
    lam = torch.logspace(0, -2, d, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    cov, root = (Q * lam) @ Q.T, (Q * lam.sqrt()) @ Q.T
    vals = torch.tensor([frechet_distance(torch.randn(n, d, generator=g, dtype=F64) @ root,
                                          torch.randn(2 * n, d, generator=g, dtype=F64) @ root) for _ in range(R)])
    pred = frechet_floor_gaussian(cov, n, 2 * n)
    # within 4 se alone: the terms eq. (bias) neglects are of relative order 1/n and below (a few tenths of a per cent at
    # n = 100 for F = 64, A5_quality), far under the se of R = 200 pairs (about 1 %)
    assert abs(vals.mean().item() - pred) < 4 * vals.std().item() / math.sqrt(R)
    # identity covariance: 2F/n + F(F+1)/2(n-1)
    assert abs(frechet_floor_gaussian(torch.eye(8, dtype=F64), 100) - (16 / 100 + 8 * 9 / 2 / 99)) < 1e-12
    # halving n doubles the floor, to first order: f(n) = A/n + B/(n - 1) with A, B >= 0, so f(500)/f(1000) lies
    # between 1000/500 and 999/499 exactly (rounding: a few ulps)
    ratio = frechet_floor_gaussian(cov, 500) / frechet_floor_gaussian(cov, 1000)
    assert 2 * (1 - 1e-12) <= ratio <= 999 / 499 * (1 + 1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# the classifier

def test_classifier_reaches_the_accuracy_and_reports_it(trained, digits):
    model, report = trained
    assert isinstance(report, ClassifierReport)
    # the judge's specification of A5_quality (eq. coverage): an error rate below 1/(2K), so that its mistakes can
    # neither fake nor hide a class; measured about 1 % on both splits, 5 to 14 binomial se below 5 %
    spec = 1 / (2 * model.n_classes)
    assert 1 - report.test_accuracy < spec and 1 - report.train_accuracy < spec
    (_, _), (x_test, y_test) = digits
    conf = confusion_matrix(model, x_test, y_test)
    assert torch.equal(conf, report.confusion) and conf.sum() == len(y_test)
    assert torch.equal(conf.sum(1), torch.bincount(y_test, minlength=10))
    assert not model.training and len(report.losses) == 12 and report.losses[-1] < report.losses[0]


def test_training_is_deterministic_with_the_seed():
    m1, r1 = train_digit_classifier(epochs=1, seed=5)
    m2, r2 = train_digit_classifier(epochs=1, seed=5)
    m3, r3 = train_digit_classifier(epochs=1, seed=6)
    assert r1.losses == r2.losses and torch.equal(r1.confusion, r2.confusion)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert r3.losses != r1.losses


def test_classifier_shapes_for_other_sizes():
    for size, n_down in ((8, 1), (16, 2), (28, 2), (32, 3)):
        net = DigitClassifier(size, feature_dim=32, seed=0)
        x = torch.zeros(2, 1, size, size)
        assert net.n_down == n_down and net.features(x).shape == (2, 32) and net(x).shape == (2, 10)


def test_random_shift_moves_content_by_at_most_max_shift():
    x = -torch.ones(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    y = random_shift(x, 1, _gen(0))
    rows, cols = (y[:, 0] == 1).nonzero()[:, 1:].T
    assert ((rows - 4).abs() <= 1).all() and ((cols - 4).abs() <= 1).all() and len(rows) == 64
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) == 9          # all nine offsets occur
    assert torch.equal(random_shift(x, 1, _gen(0)), y) and random_shift(x, 0) is x


# ---------------------------------------------------------------------------------------------------------------------
# classifier scores and the floor

def _fano(e, K=10):
    "F(e) = h_b(e) + e log(K - 1): Fano's bound H(p) <= F(1 - p_j), and the Fannes-Audenaert bound |H(p) - H(q)| <= F(tv)."
    e = torch.as_tensor(e, dtype=F64)
    h_b = -(e * e.clamp(min=1e-300).log() + (1 - e) * (1 - e).clamp(min=1e-300).log())
    return h_b + e * math.log(K - 1)


def _kl_uniform(h):
    "KL(h || uniform) in nats, 0 log 0 = 0."
    h = h[h > 0]
    return (h * (10 * h).log()).sum().item()


def test_coverage_drops_when_a_class_is_removed(trained, digits):
    model, _ = trained
    (_, _), (x_test, y_test) = digits
    full = classifier_scores(model, x_test)
    no3 = classifier_scores(model, x_test[y_test != 3])
    only7 = classifier_scores(model, x_test[y_test == 7])
    assert full["coverage"] == 1.0 and full["classes_covered"] == 10
    assert no3["coverage"] == 0.9 and only7["coverage"] == 0.1
    # class KL against the labels' (A5_quality): the predicted histogram is within total variation tv of the true one,
    # so its KL to uniform within F(tv) of the labels' (Fannes-Audenaert): near 0 for the test split, near log(10/9)
    # without the 3s
    for scores, labels in ((full, y_test), (no3, y_test[y_test != 3])):
        h_true = torch.bincount(labels, minlength=10).double() / len(labels)
        tv = 0.5 * (scores["class_histogram"] - h_true).abs().sum().item()
        assert abs(scores["class_kl"] - _kl_uniform(h_true)) <= _fano(tv).item() + 1e-12
    # the 7s' histogram entry is the classifier's accuracy on the 7s, exactly
    conf = confusion_matrix(model, x_test, y_test)
    assert only7["class_histogram"].argmax() == 7 and abs(only7["class_histogram"][7] - conf[7, 7] / conf[7].sum()) < 1e-12
    # the Inception Score in [1, K], and against what the classifier's probabilities allow (A5_quality, eq. is): the 7s'
    # IS <= exp F(1 - p_bar_7); the test split's IS >= exp(H(labels) - F(tv(p_bar, labels)) - mean_i F(1 - max_k p_i))
    with torch.no_grad():
        p7, p_test = model(x_test[y_test == 7]).double().softmax(1), model(x_test).double().softmax(1)
    is7_bound = _fano(1 - p7.mean(0)[7]).exp().item()
    h_true = torch.bincount(y_test, minlength=10).double() / len(y_test)
    tv = 0.5 * (p_test.mean(0) - h_true).abs().sum()
    is_test_bound = (-(h_true * h_true.log()).sum() - _fano(tv) - _fano(1 - p_test.max(1).values).mean()).exp().item()
    assert 1 - 1e-12 <= only7["inception_score"] <= is7_bound * (1 + 1e-12)
    assert is_test_bound * (1 - 1e-12) <= full["inception_score"] <= 10 * (1 + 1e-12)
    assert is7_bound < is_test_bound            # the two bounds alone separate one class from the real data
    assert abs(full["class_histogram"].sum().item() - 1) < 1e-12


def test_confidence_and_fd_move_with_noise(trained, digits):
    model, _ = trained
    (x_train, _), (x_test, _) = digits
    g, sigmas, n, R = _gen(4), (0.0, 0.4, 0.8), 360, 10
    x = x_train[torch.randperm(len(x_train), generator=g)[:n]]
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1) for s in sigmas]
    quality = [sample_quality(model, xs, x_test) for xs in noisy]
    assert quality[0]["n"] == n and quality[0]["m"] == len(x_test)
    # the mean confidence falls with the noise, paired over the n images (each image's confidence at two noise levels;
    # the images are a draw without replacement, so the i.i.d. standard error is conservative): each step's mean change
    # below -4 of its standard errors (measured -7.1 and -11.8 se); sample_quality's mean is the mean of these, to rounding
    with torch.no_grad():
        conf = torch.stack([model(xs).double().log_softmax(1).exp().max(1).values for xs in noisy])    # (3, n)
    assert all(abs(q["mean_confidence"] - c.mean().item()) < 1e-12 for q, c in zip(quality, conf))
    steps = conf[1:] - conf[:-1]
    assert (steps.mean(1) < -4 * steps.std(1) / math.sqrt(n)).all()
    # the Fréchet distance grows with the noise: R draws of n training digits, each at the three noise levels, so the
    # differences are paired (a draw's class-count noise, the floor's largest part, cancels); each step's mean above 4 se
    # of the paired differences over the draws, as in A5_quality (measured 15 and 52 se)
    feats_test = classifier_features(model, x_test)
    fd = []
    for _ in range(R):
        xr = x_train[torch.randperm(len(x_train), generator=g)[:n]]
        fd.append([frechet_distance(classifier_features(model, (xr + s * torch.randn(xr.shape, generator=g)).clamp(-1, 1)),
                                    feats_test) for s in sigmas])
    d = torch.tensor(fd, dtype=F64).diff(dim=1)                      # (R, 2): FD(0.4) - FD(0), FD(0.8) - FD(0.4)
    assert (d.mean(0) > 4 * d.std(0) / math.sqrt(R)).all()


def test_real_vs_real_floor_is_seeded_falls_with_n_and_brackets_clean_data(trained, digits):
    model, _ = trained
    (x_train, _), (x_test, _) = digits
    floor, values = frechet_floor(model, x_train, x_test, n=360, repeats=10, return_values=True)
    assert isinstance(floor, NoiseFloor) and values.shape == (10,) and floor.std > 0
    assert frechet_floor(model, x_train, x_test, n=360, repeats=10) == floor
    assert frechet_floor(model, x_train, x_test, n=360, repeats=10, seed=1) != floor
    # eq. (bias) of A5_quality: two disjoint sets of n drawn from the same digits have E d_F^2 = A/n + B/(n - 1) to first
    # order, A, B >= 0 (the difference of two disjoint subsets' means has variance 2 S^2/n exactly, as for independent
    # draws; the neglected terms are of relative order 1/n, about 1 % at n = 100), so floor(100)/floor(600) lies in
    # [6, 599/99]: the ratio of the means of 100 draws each within 4 delta-method se of that interval (6.28 +- 0.45,
    # +0.6 se; other seeds -1.4 to +1.0 se); a floor falling like 1/sqrt(n) (ratio 2.4) or not at all fails
    draws = 100
    small, large = (frechet_floor(model, x_train, n=m, repeats=draws) for m in (100, 600))
    ratio = small.mean / large.mean
    ratio_se = ratio * math.sqrt(((small.std / small.mean) ** 2 + (large.std / large.mean) ** 2) / draws)
    assert 6 - 4 * ratio_se < ratio < 599 / 99 + 4 * ratio_se
    # against the floor: the fields are what sample_quality promises (fd_z, a single draw's distance in floor standard
    # deviations, is reported, not bounded: the floor is skewed and has 10 draws; A5_quality checks clean digits
    # against the floor with paired draws)
    q = sample_quality(model, x_train[:360], x_test, floor=floor)
    assert q["fd_floor"] == floor.mean and q["fd_floor_std"] == floor.std
    assert q["fd_z"] == (q["fd"] - floor.mean) / floor.std
    pixels = frechet_floor(None, x_train, x_test, n=360, repeats=3)
    assert pixels.mean > 0


def test_memorization_test_null_and_verbatim_copies(digits):
    (x_train, _), (x_test, _) = digits
    # eq. (memorization) of A5_quality: real digits that no set contains are as near to a random training subset A as
    # the control (real training digits kept out of every A): the difference within 4 of its standard errors
    half = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(3))
    fresh = memorization_test(x_test[half[:180]], x_train, x_test[half[180:]], repeats=10, seed=1)
    assert abs(fresh["z"]) < 4 and 0 < fresh["share_se"] < 0.05
    # verbatim training digits: eq. (copy), s = M/N + (1 - M/N) s_control, within 4 se of both estimates
    copies = x_train[torch.randint(len(x_train), (400,), generator=torch.Generator().manual_seed(4))]
    r = memorization_test(copies, x_train, x_test, repeats=10, seed=2)
    m_over_n = len(x_test) / len(x_train)
    assert r["copy_share"] == m_over_n + (1 - m_over_n) * r["control"]
    assert abs(r["share"] - r["copy_share"]) < 4 * math.hypot(r["share_se"], (1 - m_over_n) * r["control_se"])
    assert r["z"] > 4                   # measured 5.4 at n = 500 in A5_quality; the share's mean lift is M/N (1 - s_c)
    assert memorization_test(copies, x_train, x_test, repeats=10, seed=2) == r          # seeded
    assert r["n"] == 400 and r["n_control"] == 400 and r["repeats"] == 10


def test_memorization_test_edges_defaults_and_ties():
    # ties count as "not nearer" (a strict comparison): samples equidistant from every training and held-out image
    train, heldout = torch.ones(10, 4), -torch.ones(2, 4)
    tie = memorization_test(torch.zeros(3, 4), train, heldout, repeats=2)
    assert tie["share"] == 0.0 and tie["control"] == 1.0 and tie["share_se"] == tie["control_se"] == 0.0
    assert tie["z"] == -math.inf                            # no spread at all: the sign of the difference, infinite
    same = memorization_test(torch.ones(3, 4), train, heldout, repeats=2)
    assert same["share"] == same["control"] == 1.0 and same["z"] == 0.0
    # the smallest sets allowed, 2-D input, and the defaults (20 repeats, seed 0, control min(n, N - 2M))
    g = torch.Generator().manual_seed(0)
    x, tr, ho = torch.randn(2, 5, generator=g), torch.randn(9, 5, generator=g), torch.randn(2, 5, generator=g)
    r = memorization_test(x, tr, ho)
    assert r["repeats"] == 20 and r["n"] == 2 and r["n_control"] == 2
    assert r == memorization_test(x, tr, ho, repeats=20, seed=0, n_control=2)
    many = memorization_test(torch.randn(8, 5, generator=g), tr, ho)
    assert many["n_control"] == 9 - 2 * 2                   # min(n, N - 2M) with n > N - 2M
    assert memorization_test(torch.randn(8, 5, generator=g), tr, ho, n_control=5)["n_control"] == 5
    with pytest.raises(ValueError, match="n_control"):
        memorization_test(x, tr, ho, n_control=6)           # N - 2M = 5 training images are left for the control
    with pytest.raises(TypeError, match="samples"):
        memorization_test(torch.randn(5), tr, ho)           # (count, ...) needs at least 2 dimensions


# ---------------------------------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("call, match", [
    (lambda m, x: frechet_distance(x.flatten(1), x.flatten(1)[:, :10]), "feature dimension"),
    (lambda m, x: frechet_distance(x.flatten(1)[:1], x.flatten(1)), "feats_a"),
    (lambda m, x: frechet_distance(x.flatten(1), torch.ones(5, 64, dtype=torch.long)), "feats_b"),
    (lambda m, x: frechet_distance(x.flatten(1), x.flatten(1) * float("nan")), "feats_b"),
    (lambda m, x: frechet_distance_gaussians(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2)), "cov_a"),
    (lambda m, x: frechet_distance_gaussians(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.tensor([[1.0, 1], [0, 1]])), "cov_b"),
    (lambda m, x: frechet_distance_gaussians(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(2)), "mean_b"),
    (lambda m, x: frechet_floor_gaussian(torch.eye(2), 1), "n_a"),
    (lambda m, x: classifier_scores(m, x[:, :, :4]), "images"),
    (lambda m, x: classifier_scores(m, x[0]), "images"),
    (lambda m, x: classifier_scores("model", x), "model"),
    (lambda m, x: classifier_scores(m, x.long()), "images"),
    (lambda m, x: sample_quality(m, x, x[:, :, :4, :4]), "reference"),
    (lambda m, x: sample_quality(m, x * float("inf"), x), "samples"),
    (lambda m, x: sample_quality(m, x, x, floor=(0.5, 0.1)), "floor"),
    (lambda m, x: frechet_floor(m, x, n=x.shape[0]), "`n`"),
    (lambda m, x: frechet_floor(m, x, repeats=1), "repeats"),
    (lambda m, x: frechet_floor(m, x, seed=0.5), "seed"),
    (lambda m, x: train_digit_classifier(epochs=0), "epochs"),
    (lambda m, x: train_digit_classifier(lr=-1.0), "lr"),
    (lambda m, x: train_digit_classifier(seed="0"), "seed"),
    (lambda m, x: DigitClassifier(channels=12, groups=8), "channels"),
    (lambda m, x: DigitClassifier(size=0), "size"),
    (lambda m, x: m(x.double()), "`x`"),
    (lambda m, x: random_shift(x, -1), "max_shift"),
    (lambda m, x: memorization_test(x.long(), x, x[:5]), "samples"),
    (lambda m, x: memorization_test(x, x, x[:10]), "heldout"),
    (lambda m, x: memorization_test(x, x, x[:1]), "heldout"),
    (lambda m, x: memorization_test(x, x, x[:5, :, :4]), "trailing shape"),
    (lambda m, x: memorization_test(x[:1], x, x[:5]), "samples"),
    (lambda m, x: memorization_test(x, x * float("nan"), x[:5]), "train"),
    (lambda m, x: memorization_test(x, x, x[:5], repeats=0), "repeats"),
])
def test_bad_arguments_are_named(call, match):
    model = DigitClassifier(seed=0)
    x = load_digits("test")[0][:20]
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, x)


# ---------------------------------------------------------------------------------------------------------------------
# devices and dtypes

def test_devices_follow_the_inputs(device):
    model = DigitClassifier(seed=0).to(device)
    x = load_digits("test", device=device)[0][:50]
    feats = classifier_features(model, x)
    assert feats.device.type == torch.device(device).type and feats.dtype == F64 and feats.shape == (50, 64)
    cpu_feats = classifier_features(DigitClassifier(seed=0), x.cpu())
    torch.testing.assert_close(feats.cpu(), cpu_feats, rtol=1e-4, atol=1e-4)
    assert abs(frechet_distance(feats[:25], feats[25:]) - frechet_distance(cpu_feats[:25], cpu_feats[25:])) < 1e-3
    q = sample_quality(model, x.double(), x)                     # float64 samples for a float32 classifier
    assert q["coverage"] >= 0 and q["class_histogram"].device.type == "cpu"
    shifted = random_shift(x, 1, _gen(0, device))
    assert shifted.device == x.device and shifted.shape == x.shape
    if device != "cpu":
        with pytest.raises(ValueError, match="images"):
            classifier_features(model, x.cpu())
        with pytest.raises(ValueError, match="feats_b"):
            frechet_distance(feats, cpu_feats)
