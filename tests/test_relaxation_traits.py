"""Relaxation traits are declared once, at ``register(...)``, and every caller asks the registry.

The tables below are the scattered sets the traits replaced (``train/losses.py``'s β and fusion sets,
``train/configs.py``'s cost table and interval pair, the registry's one-sided set): the callers must answer
exactly as they did, for every registered name.
"""

import dataclasses

import pytest

from jaxcert.bounds import RelaxationTraits, relaxation_names, relaxation_traits
from jaxcert.bounds import registry as reg
from jaxcert.bounds.crown import crown_bounds

#: Before the traits: ``train/configs.py``'s ``_COST`` (``.get(name, 4)``), ``train/losses.py``'s
#: ``BETA_RELAXATIONS`` and ``FUSABLE_RELAXATIONS``, ``train/configs.py``'s ``INTERVAL_RELAXATIONS``, and the
#: relaxations registered with ``one_sided=True``.
OLD_COST = {"ibp": 0, "box": 0, "hbox": 1, "crown-ibp": 2, "deepz": 3, "alpha-crown": 5, "crown-lee": 5}
OLD_COST |= {"alpha-crown-full": 6}
OLD_BETA = {"crown-ibp"}
OLD_FUSABLE = {"crown-ibp"}
OLD_INTERVAL = ("ibp", "box")
OLD_ONE_SIDED = {"crown", "deeppoly", "crown-zero", "crown-one", "crown-parallel", "crown-zero-c", "crown-one-c"}
OLD_ONE_SIDED |= {"crown-soft", "crown-given", "crown-ibp", "alpha-crown", "alpha-crown-full"}
OLD_CROWN_COST = 4


def old_cost(name: str) -> int:
    return OLD_COST.get(name, 4)


def test_every_registered_relaxation_declares_its_traits():
    for name in relaxation_names():
        traits = relaxation_traits(name)
        assert isinstance(traits, RelaxationTraits), name
        assert isinstance(traits.cost, int) and traits.cost >= 0, name


def test_registering_without_traits_or_with_options_the_function_lacks_fails():
    with pytest.raises(TypeError, match="traits"):
        reg.register("no-traits", crown_bounds)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="RelaxationTraits"):
        reg.register("bad-traits", crown_bounds, traits={"cost": 4})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no option"):
        reg.register("typo", crown_bounds, traits=RelaxationTraits(cost=4), unstable_budgett=3)
    with pytest.raises(ValueError, match="cost"):
        RelaxationTraits(cost=-1)
    with pytest.raises(ValueError, match="fusable"):
        RelaxationTraits(cost=1, fusable=1)  # type: ignore[arg-type]
    assert "no-traits" not in relaxation_names() and "typo" not in relaxation_names()


@pytest.mark.parametrize("name", relaxation_names())
def test_the_registry_answers_as_the_scattered_sets_did(name):
    assert reg.relaxation_cost(name) == old_cost(name)
    assert reg.is_cheap(name) == (old_cost(name) < OLD_CROWN_COST)
    assert reg.is_one_sided(name) == (name in OLD_ONE_SIDED)
    assert reg.is_beta_mixable(name) == (name in OLD_BETA)
    assert reg.is_fusable(name) == (name in OLD_FUSABLE)
    assert reg.is_interval(name) == (name in OLD_INTERVAL)


@pytest.mark.parametrize("name", relaxation_names())
def test_the_old_call_sites_answer_as_before(name):
    from jaxcert.certify import bound_batch_size, stage_plan
    from jaxcert.train.configs import TrainConfig
    from jaxcert.train.loop import _schedule_curve

    # certify: examples per call, and the stage order of a cascade with this relaxation in it
    assert bound_batch_size(name, 256) == (256 if old_cost(name) < OLD_CROWN_COST else 32)
    cascade = ("ibp", name, "crown")
    cheap = 0
    while cheap < len(cascade) and old_cost(cascade[cheap]) < OLD_CROWN_COST:
        cheap += 1
    kinds = [(s.kind, s.name) for s in stage_plan(cascade, 1, 0)]
    expected = [("clean", "clean"), *[("bound", n) for n in cascade[:cheap]], ("attack", "pgd")]
    assert kinds == [*expected, *[("bound", n) for n in cascade[cheap:]]]
    # configs: the default cascade, cheapest first (a stable sort by the old table)
    config = TrainConfig(relaxation=name, method="certified")
    assert config.eval_cascade == tuple(sorted(dict.fromkeys(("ibp", "crown-ibp", name)), key=old_cost))
    # loss fusion and TAPS's interval relaxations
    if name in OLD_FUSABLE:
        TrainConfig(relaxation=name, loss_fusion=True)
    else:
        with pytest.raises(ValueError, match="loss_fusion needs a certified loss with relaxation 'crown-ibp'"):
            TrainConfig(relaxation=name, loss_fusion=True)
    if name in OLD_INTERVAL:
        TrainConfig(relaxation=name, method="taps")
    else:
        with pytest.raises(ValueError, match="relaxation must be ibp or box"):
            TrainConfig(relaxation=name, method="taps")
    # the plotted schedule keeps β only for β-mixable relaxations (loop.py's former != "crown-ibp")
    assert ("beta" in _schedule_curve(dataclasses.replace(config, steps=10))) == (name in OLD_BETA)


@pytest.mark.parametrize("name", relaxation_names())
def test_declared_traits_agree_with_the_options_the_function_takes(name):
    accepted = reg.accepted_options(name)
    assert reg.is_one_sided(name) == ("bound_upper" in accepted), name
    assert reg.is_beta_mixable(name) == ("beta" in accepted), name


def test_the_loss_terms_ask_the_registry():
    import jaxcert.train.losses as losses
    import jaxcert.train.methods.expressive as expressive
    import jaxcert.train.methods.sabr as sabr

    for module in (losses, expressive, sabr):
        assert not hasattr(module, "BETA_RELAXATIONS") and not hasattr(module, "FUSABLE_RELAXATIONS")
    import jaxcert.train.configs as configs

    assert not hasattr(configs, "relaxation_cost") and not hasattr(configs, "INTERVAL_RELAXATIONS")


def test_cheapest_first_and_relaxations_with_follow_the_traits():
    assert reg.cheapest_first(["alpha-crown", "crown", "deepz", "ibp", "crown-ibp"]) == (
        "ibp", "crown-ibp", "deepz", "crown", "alpha-crown"
    )  # fmt: skip
    assert reg.relaxations_with("interval") == ("ibp", "box")
    assert reg.relaxations_with("fusable") == ("crown-ibp",)
    with pytest.raises(ValueError, match="unknown boolean relaxation trait"):
        reg.relaxations_with("cost")
    with pytest.raises(ValueError, match="unknown relaxation 'nope'"):
        reg.relaxation_cost("nope")
