"""The ops console in the browser: live store, funnel, rules (see :mod:`.server`)."""

from proximity.console.feed import ConsoleFeed
from proximity.console.server import Console, ConsoleServer
from proximity.console.settings import ConsoleSettings

__all__ = ["Console", "ConsoleFeed", "ConsoleServer", "ConsoleSettings"]
