from datetime import timedelta
from pathlib import Path

import pytest

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
