"""The README's settings table is the settings class: same variables, same defaults."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `(RELAY_[A-Z_]+)` \| ([^|]+) \|")


def documented() -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for line in README.read_text().splitlines() if (m := ROW.match(line))}


def shown(default: object) -> str:
    if default is None or default == ():
        return "—"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def test_every_setting_is_documented_with_its_default() -> None:
    """No setting is missing from the README, none is documented that does not exist, defaults agree."""
    table = documented()
    expected = {f"RELAY_{name.upper()}": shown(field.default) for name, field in Settings.model_fields.items()}
    assert sorted(table) == sorted(expected)
    assert table == expected
