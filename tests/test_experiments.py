"""A/B variants and holdouts: stable per shopper, split by weight, measurable."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from proximity.engine.controls import Suppression
from proximity.engine.decide import Decider
from proximity.engine.experiments import held_out, variant_for
from proximity.engine.loader import check_rule_files
from tests.factories import make_shopper
from tests.test_conditions_and_controls import HEAD, enter, rule, table

EXPERIMENT = (
    "holdout = 0.2\n"
    '[[rules.variants]]\nid = "a"\nweight = 3\n'
    '[[rules.variants]]\nid = "b"\nweight = 1\ncoupon = "COFFEE-25"\n'
    'cta = { format = "push", title = "25% off, today" }\n'
)


def experiment_rule() -> str:
    return (
        '[[rules]]\nid = "promo"\non = "zone.enter"\nmoment = "buy"\ncoupon = "COFFEE-20"\n'
        'cta = { format = "banner", title = "20% off" }\n' + EXPERIMENT
    )


def test_shoppers_split_by_weight_and_holdout(tmp_path: Path) -> None:
    t = table(tmp_path, experiment_rule())
    decider = Decider(t)
    arms = {"a": 0, "b": 0, "holdout": 0}
    for n in range(4000):
        shopper = make_shopper(token=f"s-shopper-{n:05d}")
        d = decider.decide(enter("coffee", shopper=shopper, visit=f"v-{n}"))
        if d.offers:
            (offer,) = d.offers
            arms[offer.variant or "?"] += 1
            if offer.variant == "b":
                assert (offer.coupon, offer.cta.title) == ("COFFEE-25", "25% off, today")
            else:
                assert (offer.coupon, offer.cta.title) == ("COFFEE-20", "20% off")
        else:
            assert d.suppressed == (("promo", Suppression.HOLDOUT),)
            arms["holdout"] += 1
    assert 0.17 < arms["holdout"] / 4000 < 0.23
    shown = arms["a"] + arms["b"]
    assert 0.71 < arms["a"] / shown < 0.79


@given(st.from_regex(r"s-[a-z0-9]{4,20}", fullmatch=True))
def test_a_shopper_always_lands_in_the_same_arm(token: str) -> None:
    from proximity.engine.rules import Rule

    r = Rule.model_validate(
        {
            "id": "promo",
            "on": "zone.enter",
            "moment": "buy",
            "cta": {"format": "banner", "title": "t"},
            "holdout": 0.5,
            "variants": [{"id": "a"}, {"id": "b", "weight": 2}],
        }
    )
    assert held_out(r, token) == held_out(r, token)
    assert variant_for(r, token) == variant_for(r, token)


def test_duplicate_variant_ids_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        HEAD
        + rule("x", "zone.enter").replace(
            "[rules.when]",
            '[[rules.variants]]\nid = "a"\n[[rules.variants]]\nid = "a"\n[rules.when]',
        )
    )
    (error,) = check_rule_files([path])
    assert error.message == 'rule "x": variant "a" is defined twice'


def test_signage_reaches_the_zone_topic_for_anonymous_shoppers_too(tmp_path: Path) -> None:

    t = table(
        tmp_path,
        '[[rules]]\nid = "screen"\non = "zone.enter"\naudience = "signage"\nmoment = "know"\n'
        'cooldown = "5m"\ncta = { format = "banner", title = "Fresh bread" }\n'
        '[rules.when]\nzone = "bakery"\n',
    )
    decider = Decider(t)
    anon = make_shopper(token="a-cart-0001", consent=False, anonymous=True)
    first = decider.decide(enter("bakery", shopper=anon))
    (sign,) = first.signage
    assert (sign.zone, sign.cta.title, first.offers) == ("bakery", "Fresh bread", ())
    again = decider.decide(enter("bakery", shopper=make_shopper(), visit="v-2"))
    assert again.signage == ()
    assert again.suppressed == (("screen", Suppression.COOLDOWN),)
