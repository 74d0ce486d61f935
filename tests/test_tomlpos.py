import tomllib

from hypothesis import given, settings

from proximity.engine.tomlpos import Position, locate, syntax_error
from tests.strategies import toml_documents

DOC = """\
# a comment with = and [brackets]
title = "a # not a comment"   # a comment
[store]
id = 'lit#eral'
nested.key = 1

[zones.coffee]
scanners = ["a", 'b',
  "c"]   # trailing

[[rules]]
id = "r1"
[rules.cta]
title = \"\"\"multi
[not] = "a header"
\"\"\"
[[rules]]
id = "r2"
when = { zone = "coffee", dwell = "30s" }
"""


def test_positions_of_values_keys_and_headers() -> None:
    tomllib.loads(DOC)
    pos = locate(DOC)
    assert pos.value[("title",)] == Position(2, 9)
    assert pos.value[("store", "id")] == Position(4, 6)
    assert pos.value[("store", "nested", "key")] == Position(5, 14)
    assert pos.key[("store", "nested")] == Position(5, 1)
    assert pos.value[("zones", "coffee", "scanners", 2)] == Position(9, 3)
    assert pos.key[("rules", 0)] == Position(11, 1)
    assert pos.value[("rules", 0, "cta", "title")] == Position(14, 9)
    assert pos.value[("rules", 1, "id")] == Position(18, 6)
    assert pos.value[("rules", 1, "when", "dwell")] == Position(19, 35)
    assert ("not",) not in pos.value


def test_lookup_falls_back_to_the_nearest_ancestor() -> None:
    pos = locate(DOC)
    assert pos.lookup(("rules", 1, "cta", "title")) == Position(17, 1)
    assert pos.lookup(("rules", 0, "cta", "missing"), prefer_key=True) == Position(13, 1)
    assert pos.lookup(("nothing", "here")) == Position(1, 1)


@settings(max_examples=150)
@given(toml_documents())
def test_every_leaf_points_at_its_own_text(
    doc: tuple[str, dict[tuple[str | int, ...], str]],
) -> None:
    text, leaves = doc
    tomllib.loads(text)  # the generator writes valid TOML
    lines = text.splitlines()
    found = locate(text)
    for path, rendered in leaves.items():
        pos = found.value[path]
        at = lines[pos.line - 1][pos.column - 1 :]
        assert at.startswith(rendered), (path, pos, at)


def test_a_syntax_error_is_split_into_its_message_and_position() -> None:
    try:
        tomllib.loads('a = 1\nb = "unclosed\n')
    except tomllib.TOMLDecodeError as exc:
        message, at = syntax_error(exc)
    assert at == Position(2, 14)
    assert "(at line" not in message
    assert message
