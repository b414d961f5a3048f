"""The CROWN-family options record: validation (one-line errors naming the option), parsing of command-line
items, conversion to the keyword arguments each relaxation takes, and its use at the registry boundary."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import margin_lower_bounds, relaxation_names
from jaxcert.bounds import registry as reg
from jaxcert.crown_options import INTERMEDIATE, LOWER_SLOPE_RULES, CrownOptions
from tests.soundness import tiny_params

ROOT = Path(__file__).resolve().parents[1]

#: A bad value per option, and what the error says it must be.
BAD = {
    "lower_slope": ("given", "one of adaptive"),
    "init": ("steep", "one of adaptive"),
    "tau": (0.0, "a number in (0, 1]"),
    "gamma": (-1.0, "a finite number >= 0"),
    "intersect_ibp": (1, "true or false"),
    "unstable_budget": (0, "an int >= 1"),
    "unstable_rows": ("some", "true, false or auto"),
    "unstable_chunk": (0, "an int >= 1 (pairs)"),
    "patches": ("yes please", "true, false or auto"),
    "max_rows_bytes": (2.5, "an int >= 1"),
    "bound_upper": ("no", "true or false"),
    "steps": (-1, "an int >= 0"),
    "lr": (float("inf"), "a finite number > 0"),
    "lr_decay": (1.5, "a number in (0, 1]"),
    "intermediate": ("deepz", "one of crown, ibp"),
    "optimize_intermediate": (None, None),  # None is "not set": no error
}


def test_every_option_has_a_bad_value_that_names_it():
    assert set(BAD) == set(CrownOptions.names())
    for name, (value, what) in BAD.items():
        if what is None:
            assert CrownOptions(**{name: value}).to_dict() == {}
            continue
        with pytest.raises(ValueError, match=rf"^relaxation option {name} must be {what[:8]}") as err:
            CrownOptions(**{name: value})
        assert "\n" not in str(err.value)


def test_command_line_items_parse_to_typed_values_and_unknown_names_list_the_known_ones():
    items = ["unstable_budget=64", "patches=auto", "bound-upper=false", "lr=0.05", "lower_slope=zero", "steps=3"]
    options = CrownOptions.parse(items)
    assert options.to_dict() == {
        "lower_slope": "zero", "unstable_budget": 64, "patches": "auto", "bound_upper": False, "steps": 3, "lr": 0.05,
    }  # fmt: skip
    assert CrownOptions.parse(["patches=true", "patches=false"]).patches is False  # the later item wins
    assert CrownOptions.from_dict({"steps": "7", "intersect_ibp": "off"}) == CrownOptions(steps=7, intersect_ibp=False)
    with pytest.raises(ValueError, match=r"unknown relaxation option.*nope; known: lower_slope, init"):
        CrownOptions.parse(["nope=1"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        CrownOptions.parse(["unstable_budget"])
    with pytest.raises(ValueError, match=re.escape("unstable_budget must be an int >= 1, got '6.5'")):
        CrownOptions.parse(["unstable_budget=6.5"])
    with pytest.raises(ValueError, match="optimize_intermediate=true needs intermediate=crown"):
        CrownOptions(optimize_intermediate=True, intermediate="ibp")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 4  # type: ignore[misc]


def test_the_record_knows_the_rules_and_every_option_reaches_a_relaxation_under_its_own_name():
    from jaxcert.bounds.relu_slopes import LOWER_SLOPE_RULES as RULES

    assert LOWER_SLOPE_RULES == tuple(RULES)
    taken = set().union(*(reg.accepted_options(name) for name in relaxation_names()))
    assert set(CrownOptions.names()) <= taken  # kwargs_for gives names the relaxations take today
    assert INTERMEDIATE == ("crown", "ibp")


def test_options_go_to_each_relaxation_that_takes_them_and_one_none_takes_is_an_error():
    options = CrownOptions(unstable_budget=3, lower_slope="zero", steps=2)
    per = reg.options_by_relaxation(("ibp", "crown-ibp", "crown", "alpha-crown"), options)
    assert per["ibp"] == {}
    assert per["crown-ibp"] == {"lower_slope": "zero"}
    assert per["crown"] == {"lower_slope": "zero", "unstable_budget": 3}
    assert per["alpha-crown"] == {"unstable_budget": 3, "steps": 2}
    with pytest.raises(ValueError, match="unstable_budget taken by none of the relaxations ibp, crown-ibp"):
        reg.options_by_relaxation(("ibp", "crown-ibp"), {"unstable_budget": 3})
    with pytest.raises(ValueError, match="unknown relaxation 'nope'"):
        reg.options_by_relaxation(("nope",), {})


def test_options_through_the_record_give_the_bounds_of_the_direct_keywords():
    arch, in_shape, params = tiny_params("mlp", 1)
    x = jax.random.uniform(jax.random.key(3), (4, *in_shape))
    y = jnp.arange(4) % 3
    options = CrownOptions.parse(["unstable_budget=1", "patches=false"])
    kwargs = reg.options_by_relaxation(["crown"], options)["crown"]
    via_record = margin_lower_bounds(arch, params, x, y, 0.1, relaxation="crown", **kwargs)
    direct = margin_lower_bounds(arch, params, x, y, 0.1, relaxation="crown", unstable_budget=1, patches=False)
    full = margin_lower_bounds(arch, params, x, y, 0.1, relaxation="crown")
    np.testing.assert_array_equal(via_record, direct)
    assert bool(jnp.all(via_record <= full + 1e-5))  # the budget is sound and never tighter than full CROWN


def test_the_record_imports_no_jax():
    code = "import sys, jaxcert.crown_options; print([m for m in ('jax', 'numpy') if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
