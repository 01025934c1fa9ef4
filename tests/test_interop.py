"""Adapters run against the real libraries; every returned example must respect its own class's eps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.attacks import ConstraintViolation, check_ball, perturbation_norms
from calib.interop import art_attack, autoattack_attack, foolbox_attack, torchattacks_attack
from calib.train import predict

pytest.importorskip("torchattacks")
pytest.importorskip("art")
pytest.importorskip("foolbox")
pytest.importorskip("pyautoattack")


@pytest.fixture(scope="module")
def batch(digits_splits):
    test = digits_splits.test
    return test.images[:80], test.labels[:80]


def assert_own_class_ball(x, adv, y, table, norm, tol):
    assert torch.is_tensor(adv) and adv.dtype == torch.float32  # every adapter returns a tensor
    adv = adv.detach().cpu().numpy()
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    d = perturbation_norms(torch.from_numpy(x), torch.from_numpy(adv), norm).numpy()
    eps = table.eps("input", norm)[y]  # independent of eps_for: index the per-class list directly
    assert (d <= eps + tol).all()
    return adv


CASES = [
    ("torchattacks-pgd-linf", torchattacks_attack, {"attack": "pgd", "norm": "linf"}),
    ("torchattacks-pgd-l2", torchattacks_attack, {"attack": "pgd", "norm": "l2"}),
    ("torchattacks-fgsm", torchattacks_attack, {"attack": "fgsm", "norm": "linf"}),
    ("art-pgd-linf", art_attack, {"attack": "pgd", "norm": "linf"}),
    ("art-pgd-linf-arrays", art_attack, {"attack": "pgd", "norm": "linf", "random_start": False}),
    ("art-pgd-l2", art_attack, {"attack": "pgd", "norm": "l2"}),
    ("art-pgd-l1-arrays", art_attack, {"attack": "pgd", "norm": "l1", "random_start": False}),
    ("art-fgm", art_attack, {"attack": "fgm", "norm": "linf"}),
    ("foolbox-linf-pgd", foolbox_attack, {"attack": "pgd", "norm": "linf"}),
    ("foolbox-l2-pgd", foolbox_attack, {"attack": "pgd", "norm": "l2"}),
    ("autoattack-apgd-ce", autoattack_attack, {"norm": "linf", "version": "custom", "attacks": ["apgd-ce"]}),
]


@pytest.mark.parametrize("name, fn, kw", CASES, ids=[c[0] for c in CASES])
def test_adapter_respects_each_class_budget_and_attacks(name, fn, kw, batch, digits_classifier, digits_table):
    x, y = batch
    adv = fn(digits_classifier, x, y, digits_table, **kw)
    adv = assert_own_class_ball(x, adv, y, digits_table, kw["norm"], 1e-4 if kw["norm"] == "l1" else 1e-6)
    clean = (predict(digits_classifier, x) == y).mean()
    robust = (predict(digits_classifier, adv) == y).mean()
    assert robust < clean  # the library really attacked (per-class budgets are not tiny)
    assert digits_classifier.training is False


def test_grouping_equals_direct_library_call(batch, digits_classifier, digits_table):
    """Per-class grouping gives, for each class, what torchattacks returns when called directly."""
    import torchattacks

    x, y = batch
    adv = torchattacks_attack(digits_classifier, x, y, digits_table, steps=5, random_start=False)
    c = int(y[0])
    eps = float(digits_table.eps("input", "linf")[c])
    direct = torchattacks.PGD(digits_classifier, eps=eps, alpha=0.5 * eps, steps=5, random_start=False)(
        torch.from_numpy(x[y == c]), torch.from_numpy(y[y == c]))
    torch.testing.assert_close(adv[torch.from_numpy(y == c)], direct, rtol=0, atol=0)


def test_art_array_path_equals_per_class_scalars(batch, digits_classifier, digits_table):
    x, y = batch
    arrays = art_attack(digits_classifier, x, y, digits_table, steps=5, random_start=False).numpy()
    per_class = np.empty_like(arrays)
    for c in np.unique(y):
        m = y == c
        one = digits_table.__class__.from_dict(digits_table.to_dict())
        per_class[m] = art_attack(digits_classifier, x[m], y[m], one, steps=5, random_start=False).numpy()
    np.testing.assert_allclose(arrays, per_class, atol=1e-6)


def test_zero_budget_class_is_untouched(batch, digits_classifier, digits_table):
    x, y = batch
    doc = digits_table.to_dict()
    doc["budgets"]["input/linf"]["eps"][int(y[0])] = 0.0
    table = digits_table.__class__.from_dict(doc)
    for fn in (torchattacks_attack, art_attack, foolbox_attack):
        adv = np.asarray(torch.as_tensor(fn(digits_classifier, x, y, table)))
        np.testing.assert_array_equal(adv[y == y[0]], x[y == y[0]])


def test_check_ball_catches_violations(batch):
    x, _ = batch
    bad = np.clip(x + 0.2, 0, 1)
    with pytest.raises(ConstraintViolation, match="outside the linf ball"):
        check_ball(x, bad, 0.1, "linf")
    with pytest.raises(ConstraintViolation, match="outside \\[0,1\\]"):
        check_ball(x, x + 2, 5.0, "linf")
    check_ball(x, bad, 0.2 + 1e-7, "linf")
