"""ca-partial-zb: ca-partial's plan with the backward split and its W ops in idle gaps."""

import pytest

from skippipe.costs import Costs
from skippipe.ops import OpKind
from skippipe.plan_options import PlanOptions
from skippipe.planner.paths import PlanningError
from skippipe.planner.zb_fill import no_later
from skippipe.planning import build_schedule
from skippipe.rules import violations
from skippipe.schedule_file import from_dict, to_dict
from skippipe.sim.simulate import simulate


@pytest.fixture(scope="module")
def planned(tiny_scenario):
    return build_schedule(
        tiny_scenario, PlanOptions(variants=("ca-partial", "ca-partial-zb"), time_limit_s=5, workers=1)
    )


def test_zb_keeps_ca_partials_paths_and_delays_no_forward_or_backward(planned, tiny_scenario):
    ca, zb = planned.variant("ca-partial"), planned.variant("ca-partial-zb")
    assert zb.paths == ca.paths and zb.allocation == ca.allocation
    assert zb.split_backward and zb.planned and not ca.split_backward
    assert violations(planned, tiny_scenario) == []
    assert zb.predicted["iteration_s"] <= ca.predicted["iteration_s"] + 1e-9
    assert no_later(zb.order, ca.order)  # B is shorter now; W only fills idle time
    w = Costs(tiny_scenario).weight_grad_s
    n_w = sum(o.kind is OpKind.W for ops in zb.order.values() for o in ops)
    assert n_w == sum(o.kind is OpKind.B for ops in zb.order.values() for o in ops) and w(0) > 0
    r = simulate(planned, "ca-partial-zb", tiny_scenario)
    assert r.iteration_s == pytest.approx(zb.predicted["iteration_s"], abs=1e-4)
    assert from_dict(to_dict(planned)).variants["ca-partial-zb"] == zb


def test_zb_without_its_source_is_one_planning_error(tiny_scenario):
    with pytest.raises(PlanningError, match="plan ca-partial too"):
        build_schedule(tiny_scenario, PlanOptions(variants=("ca-partial-zb",), time_limit_s=2, workers=1))
