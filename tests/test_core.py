"""The argument checks and small helpers of `sde_diffusion.core` that every chapter uses, at their boundaries: a batch
dimension, class labels, glue's one-number rule, and where a renamed argument's warning points."""
import inspect
import warnings

import pytest
import torch

from sde_diffusion.core import batch_labels, check_batch, check_label, glue, renamed_argument


def test_check_batch_accepts_any_batch_and_refuses_a_scalar_or_an_empty_batch_when_asked():
    for shape in ((5,), (1, 3), (0, 3), (2, 1, 4, 4)):                  # (B,) is a batch of numbers; B = 0 is allowed
        x = torch.zeros(shape, dtype=torch.float64)
        assert check_batch(x) is x
    assert check_batch(torch.zeros(1, 3), nonempty=True).shape == (1, 3)  # a batch of one is not empty
    with pytest.raises(ValueError, match="`z` must have a batch dimension"):
        check_batch(torch.tensor(1.0), "z")
    with pytest.raises(ValueError, match=r"`x0` must have shape \(B, \*D\) with B >= 1"):
        check_batch(torch.zeros(0, 3), "x0", nonempty=True)
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor"):
        check_batch(torch.zeros(2, 3, dtype=torch.long))


def test_check_label_accepts_class_indices_and_integer_batches_only():
    assert check_label(0) == 0 and check_label(9) == 9                    # class 0 is a class
    y = torch.tensor([0, 3, 1])
    assert check_label(y) is y and check_label(y.int()) is not None
    for bad in (torch.tensor(2), torch.zeros(3, 1, dtype=torch.long), torch.zeros(3), torch.ones(3, dtype=torch.bool)):
        with pytest.raises(ValueError, match="`label` must be an int or an integer tensor of shape"):
            check_label(bad, "label")
    with pytest.raises(ValueError, match="`y` must be a class index >= 0, got -1"):
        check_label(-1)
    for bad in (True, 1.0, "1"):
        with pytest.raises(TypeError, match="`y`"):
            check_label(bad)


def test_batch_labels_repeat_an_int_and_check_a_tensor_against_the_batch():
    x = torch.zeros(4, 3)                                                 # B = 4 differs from D = 3 on purpose
    labels = batch_labels(2, x)
    assert labels.shape == (4,) and labels.dtype == torch.long and labels.tolist() == [2, 2, 2, 2]
    got = batch_labels(torch.tensor([0, 1, 2, 3], dtype=torch.int32), x)
    assert got.dtype == torch.long and got.tolist() == [0, 1, 2, 3]
    for bad in (torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"`y` must have shape \(B,\) = \(4,\)"):
            batch_labels(bad, x)
    meta = torch.zeros(4, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="`y` is on meta but `x` is on cpu"):
        batch_labels(meta, x)


def test_glue_takes_one_number_from_a_one_element_tensor():
    v = glue("one", torch.tensor([[0.25]], dtype=torch.float64))
    assert v == 0.25 and type(v) is float
    assert glue("k", torch.tensor(7)) == 7
    for bad in (torch.zeros(2), torch.zeros(0)):
        with pytest.raises(ValueError, match="`value` must be a number"):
            glue("two", bad)


def _old_api(ode=False, *, probability_flow=None):
    return renamed_argument(ode, probability_flow, "probability_flow", "ode")


def test_renamed_argument_warns_at_the_caller_of_the_renamed_function():
    "stacklevel 3: the warning names the line that used the old keyword, not the library's own lines."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        value = _old_api(probability_flow=True)
    assert value is True and len(caught) == 1
    w = caught[0]
    assert issubclass(w.category, DeprecationWarning) and "`probability_flow` is deprecated: use `ode`" in str(w.message)
    assert (w.filename, w.lineno) == (__file__, line)
    assert _old_api(True) is True and _old_api() is False                # the new name, or its default: no warning
