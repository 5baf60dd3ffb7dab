"""An outage of Redis, which the replicas share: logged when it begins and when it ends.

Every call to Redis may fail while it is down; logging each failure would flood the log, so
each user of Redis keeps one Outage and reports every call's result to it.
"""

from __future__ import annotations

import logging


class Outage:
    """Whether Redis is failing for one of its users, logged once per change."""

    def __init__(self, logger: logging.Logger, *, begins: str, ends: str | None = None) -> None:
        """`begins`: the warning when calls start failing, with %s for the error; `ends`: the
        note when they succeed again (none if None)."""
        self._logger = logger
        self._begins = begins
        self._ends = ends
        self._failing = False

    def failed(self, exc: BaseException) -> None:
        """A call failed: warn, unless the outage was already told."""
        if not self._failing:
            self._logger.warning(self._begins, exc)
            self._failing = True

    def answered(self) -> None:
        """A call succeeded: the outage, if any, is over."""
        if self._failing:
            if self._ends is not None:
                self._logger.info(self._ends)
            self._failing = False
