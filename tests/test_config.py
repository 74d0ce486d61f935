import re
from datetime import timedelta
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from proximity.config import Settings, load_settings
from proximity.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_config_is_valid_and_states_the_defaults() -> None:
    """config.example.toml must stay true: every value it shows is the default."""
    loaded = load_settings(ROOT / "config.example.toml")
    defaults = Settings()
    assert loaded.model_dump(exclude={"rules"}) == defaults.model_dump(exclude={"rules"})
    assert loaded.rules.paths == [ROOT / "rules" / "example-store.toml"]


def test_durations_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[presence]\nexit_timeout = "1m30s"\n[rules]\npaths = ["r"]\n')
    settings = load_settings(path)
    assert settings.presence.exit_timeout == timedelta(seconds=90)
    assert settings.rules.paths == [tmp_path / "r"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store\n", "TOML syntax error"),
        ('[presence]\nexit_timeout = "soon"\n', "presence.exit_timeout"),
        ("[presence]\nenter_rssi = -90\nexit_rssi = -80\n", "exit_rssi must not be above"),
        ('[broker]\nurl = "http://x"\n', "broker.url"),
        ("[store]\nnmae = 1\n", "store.nmae"),
        ('[identity]\npseudonym_key = "short"\n', "16 bytes"),
    ],
)
def test_bad_config_is_reported_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.toml")


def test_protocol_auto_follows_the_broker() -> None:
    assert Settings().mqtt_protocol() == "3.1.1"
    assert Settings().with_broker("mqtt://127.0.0.1:1883").mqtt_protocol() == "5"


def test_a_bad_broker_url_never_shows_its_password(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[broker]\nurl = "mqtt://gw:hunter2@host:0"\n')
    with pytest.raises(ConfigError, match="bad port") as caught:
        load_settings(path)
    import traceback

    shown = "".join(traceback.format_exception(caught.value))
    assert "hunter2" not in shown
    assert "gw:***@host" in shown


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[store]\nid = "store 1"\nnmae = "x"\n\n[presence]\nexit_timeout = "soon"\n'
        '\n[[scanners]]\nid = "till"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).splitlines() == [
        f"{path}:2:6: store.id: String should match pattern '^[A-Za-z0-9_.-]{{1,64}}$'",
        f"{path}:3:1: store.nmae: unknown key (see config.example.toml for every key)",
        f'{path}:6:16: presence.exit_timeout: bad duration "soon": use a number and a unit '
        '(ms, s, m, h, d), e.g. "45s", "10m", "1h30m"',
        f"{path}:8:1: scanners.0: scanner 'till': give exactly one of serial or camera",
    ]


def test_toml_syntax_errors_point_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[store]\nid = "s"\n[broker\n')
    with pytest.raises(ConfigError, match=rf"^{path}:3:8: TOML syntax error: "):
        load_settings(path)


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        out.add(name)
        annotation = field.annotation
        for candidate in (annotation, *get_args(annotation)):
            if (
                isinstance(candidate, type)
                and issubclass(candidate, BaseModel)
                and candidate.__module__ == "proximity.config"
            ):
                out |= _keys(candidate)
    return out


def test_the_example_config_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text()
    written = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    sections = set(re.findall(r"^#?\s*\[\[?([a-z_.]+)\]\]?", text, flags=re.MULTILINE))
    documented = written | {part for s in sections for part in s.split(".")}
    keys = _keys(Settings)
    assert {"coupon_validity", "max_fps", "debounce", "walk"} <= keys  # nested models too
    missing = keys - documented
    assert not missing, f"config.example.toml does not mention: {sorted(missing)}"


def test_several_adapters_each_named_as_a_store_scanner(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[ble]\nbackend = "bleak"\nadapters = { "gw-coffee" = "hci0", "gw-bakery" = "hci1" }\n'
    )
    ble = load_settings(path).ble
    assert ble.scanners() == {"gw-coffee": "hci0", "gw-bakery": "hci1"}
    # one adapter: its name is the scanner; none: the default adapter
    assert Settings().ble.scanners() == {"default": None}
    one = Settings.model_validate({"ble": {"adapter": "hci2"}}).ble
    assert one.scanners() == {"hci2": "hci2"}


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        ('adapter = "hci0"\nadapters = { "gw-coffee" = "hci1" }', "not both"),
        ("adapters = {}", "ble.adapters is empty"),
        (
            'adapters = { "gw-coffee" = "hci0", "gw-bakery" = "hci0" }',
            "adapter 'hci0' is given to both 'gw-coffee' and 'gw-bakery'",
        ),
        ('adapters = { "gw coffee" = "hci0" }', "ble.adapters.gw coffee"),
        ('adapters = { "gw-coffee" = "/org/bluez/hci0" }', "ble.adapters.gw-coffee"),
    ],
)
def test_bad_adapters_are_reported_clearly(tmp_path: Path, adapters: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[ble]\nbackend = "bleak"\n{adapters}\n')
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_settings(path)
    assert str(path) in str(info.value)
