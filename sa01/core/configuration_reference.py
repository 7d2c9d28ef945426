"""Render ``docs/configuration.md`` from :class:`sa01.core.settings.Settings`.

Run ``python -m sa01.core.configuration_reference`` after changing a setting; a test fails
while the file is stale.
"""

from __future__ import annotations

from pathlib import Path

from sa01.core.settings import Settings

__all__ = ["REFERENCE_PATH", "render_reference"]

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def render_reference() -> str:
    """The Markdown table of every setting: variable, default, description."""
    lines = [
        "# Configuration",
        "",
        "Generated from `sa01/core/settings.py` by `python -m sa01.core.configuration_reference`.",
        "Every variable is optional; defaults point at 127.0.0.1.",
        "",
        "| variable | default | description |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        variable = alias or f"SA01_{name.upper()}"
        default = field.default
        shown = "" if default is None else f"`{default}`"
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{variable}` | {shown} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    REFERENCE_PATH.write_text(render_reference())
    print(REFERENCE_PATH)
