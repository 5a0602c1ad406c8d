"""The OpenAI `stop` parameter on a stream: text is passed on as it comes, except a tail that might still become
a stop string, which is held back until the next piece says whether it does."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed answer text piece by piece; get back what may be shown, and whether a stop string was reached (the
    stop string itself and everything after it are never shown, as in the OpenAI API)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        pending = self._held + text
        cut = min((index for index in (pending.find(stop) for stop in self._stops) if index >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return pending[:cut]
        keep = max((length for stop in self._stops for length in range(1, len(stop))
                    if pending.endswith(stop[:length])), default=0)
        self._held = pending[len(pending) - keep:] if keep else ""
        return pending[:len(pending) - keep]

    def flush(self) -> str:
        """The held-back tail once the answer has ended: it did not become a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
