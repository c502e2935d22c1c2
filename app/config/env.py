"""Reading settings from the environment, collecting every problem at once.

Settings call these readers; at the end ``Env.finish()`` stops start-up with
one message listing every missing or unsafe value instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

EX_CONFIG = 78  # sysexits.h: configuration error; systemd shows it as such


class Env:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.environ = environ
        self.errors: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value if value not in (None, "") else None

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.error(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")
        return default

    def int(self, name: str, default: int, minimum: int | None = None) -> int:
        return self._number(name, default, int, "an integer", minimum)

    def float(self, name: str, default: float, minimum: float = 0.0) -> float:
        return self._number(name, default, float, "a number", minimum)

    def _number(self, name, default, cast, kind: str, minimum):
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = cast(value)
        except ValueError:
            self.error(f"{name}={value!r} is not {kind}")
            return default
        if minimum is not None and number < minimum:
            self.error(f"{name}={number} must be at least {minimum}")
            return default
        return number

    def list(self, name: str, default: list[str] | None = None) -> list[str]:
        value = self.raw(name)
        if value is None:
            return list(default or [])
        return [item.strip() for item in value.split(",") if item.strip()]

    def error(self, message: str) -> None:
        self.errors.append(message)

    def finish(self) -> None:
        if not self.errors:
            return
        lines = "\n".join(f"  - {e}" for e in self.errors)
        sys.stderr.write(
            "Configuration error: the application cannot start.\n"
            f"{lines}\n"
            "Set these in the service's environment file (see app/README.md, 'Settings').\n"
        )
        raise SystemExit(EX_CONFIG)
