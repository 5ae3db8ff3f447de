"""losses.schedule: the loss weights at given epochs (first, middle, end of ramp, floor reached), hand-computed."""
import pytest

from losses import build_loss
from losses.schedule import BoundaryWeightSchedule
from utils.fileio import UserError


def weights(kind, variant="C", lambda_boundary=0.2, **kw):
    schedule = BoundaryWeightSchedule(kind, build_loss(variant, lambda_boundary=lambda_boundary).weights, **kw)
    return lambda epoch: schedule.weights_at(epoch)


def test_constant_returns_the_base_weights_at_every_epoch():
    at = weights("constant", "C", 0.3)
    for epoch in (0, 1, 80, 159, 1000):
        assert at(epoch) == {"ce": 1.0, "dice": 1.0, "boundary": 0.3}
    assert weights("constant", "A")(5) == {"ce": 1.0}  # any variant: only its own terms


def test_linear_ramp_first_middle_end_and_after():
    at = weights("linear", "C", 0.2, start=0.05, ramp_epochs=10)  # end = λ_b = 0.2
    assert at(0)["boundary"] == pytest.approx(0.05)
    assert at(1)["boundary"] == pytest.approx(0.05 + 0.15 / 10)
    assert at(5)["boundary"] == pytest.approx(0.125)  # halfway
    assert at(10)["boundary"] == pytest.approx(0.2)  # ramp done
    assert at(11)["boundary"] == at(159)["boundary"] == pytest.approx(0.2)  # stays at end
    assert at(7)["ce"] == 1.0 and at(7)["dice"] == 1.0  # region weights untouched
    # an explicit end, decreasing ramp, and ramp_epochs = 0 (end from the start)
    down = weights("linear", "D", 0.2, start=0.5, end=0.1, ramp_epochs=4)
    assert [round(down(e)["boundary"], 10) for e in range(6)] == [0.5, 0.4, 0.3, 0.2, 0.1, 0.1]
    assert set(down(0)) == {"ce", "boundary"}
    assert weights("linear", "C", 0.2, start=0.0, ramp_epochs=0)(0)["boundary"] == 0.2


def test_steal_kervadec_schedule():
    # Kervadec et al.: α = 1 − 0.01·e floored at 0.01, boundary weight 1 − α; here region = CE and Dice.
    at = weights("steal", "C", 0.0, delta=0.01, floor=0.01)
    assert at(0) == {"ce": 1.0, "dice": 1.0, "boundary": 0.0}
    assert at(1) == pytest.approx({"ce": 0.99, "dice": 0.99, "boundary": 0.01})
    assert at(50) == pytest.approx({"ce": 0.5, "dice": 0.5, "boundary": 0.5})
    assert at(99) == pytest.approx({"ce": 0.01, "dice": 0.01, "boundary": 0.99})  # floor reached
    assert at(100) == pytest.approx(at(99)) and at(159) == pytest.approx(at(99))  # and held


def test_steal_from_the_study_weights_and_unequal_region_weights():
    at = weights("steal", "D", 0.2, delta=0.05, floor=0.3)
    assert at(2) == pytest.approx({"ce": 0.9, "boundary": 0.3})
    assert at(14) == pytest.approx({"ce": 0.3, "boundary": 0.9})  # 1.0 − 0.3 = 0.7 = 14·0.05 stolen
    assert at(20) == pytest.approx({"ce": 0.3, "boundary": 0.9})
    # λ_d = 0.5 < 1: Dice reaches the floor first; the boundary keeps gaining while CE still gives
    base = build_loss("C", lambda_dice=0.5, lambda_boundary=0.2).weights
    s = BoundaryWeightSchedule("steal", base, delta=0.1, floor=0.2)
    assert s.weights_at(3) == pytest.approx({"ce": 0.7, "dice": 0.2, "boundary": 0.5})
    assert s.weights_at(8) == pytest.approx({"ce": 0.2, "dice": 0.2, "boundary": 1.0})
    assert s.weights_at(30) == pytest.approx(s.weights_at(8))
    # a region weight already below the floor is never raised
    low = BoundaryWeightSchedule("steal", build_loss("C", lambda_dice=0.05).weights, delta=0.1, floor=0.2)
    assert low.weights_at(0)["dice"] == 0.05 and low.weights_at(9)["dice"] == 0.05


def test_schedules_act_on_any_recipe_with_a_boundary_term():
    # the region terms are the recipe's (kind "region" in losses.registry), not a fixed ce/dice list
    base = build_loss("ce=1,lovasz=0.5,boundary=0.2").weights
    steal = BoundaryWeightSchedule("steal", base, delta=0.1, floor=0.1)
    assert steal.weights_at(3) == pytest.approx({"ce": 0.7, "lovasz": 0.2, "boundary": 0.5})
    assert steal.weights_at(20) == pytest.approx({"ce": 0.1, "lovasz": 0.1, "boundary": 1.1})
    linear = BoundaryWeightSchedule("linear", base, start=0.0, ramp_epochs=4)
    assert linear.weights_at(2) == pytest.approx({"ce": 1.0, "lovasz": 0.5, "boundary": 0.1})


def test_pure_function_of_epoch_and_base_copied():
    loss_fn = build_loss("C", lambda_boundary=0.2)
    s = BoundaryWeightSchedule("steal", loss_fn.weights, delta=0.02)
    later = s.weights_at(30)
    loss_fn.weights.update(s.weights_at(10))  # what train.py does each epoch
    loss_fn.weights.update(later)
    assert s.weights_at(30) == later  # a resumed run gets the same weights from the epoch alone
    assert s.weights_at(0) == {"ce": 1.0, "dice": 1.0, "boundary": 0.2}


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown boundary schedule 'cosine': choose one of constant, linear, steal"):
        BoundaryWeightSchedule("cosine", {"ce": 1.0})
    with pytest.raises(UserError, match="needs a loss with a boundary term"):
        BoundaryWeightSchedule("linear", build_loss("B").weights)
    with pytest.raises(UserError, match="needs a loss with a boundary term"):
        BoundaryWeightSchedule("steal", build_loss("ce=1,lovasz=0.5").weights)
    with pytest.raises(UserError, match="--steal-delta must be >= 0"):
        BoundaryWeightSchedule("steal", build_loss("C").weights, delta=-0.1)
    with pytest.raises(ValueError):
        BoundaryWeightSchedule("constant", {"ce": 1.0}).weights_at(-1)
