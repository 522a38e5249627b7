"""What the writer applies to each event before it plans a row: the capture level the
operator's policy gives it, and redaction of its texts.

``Privacy.apply`` runs in the worker (inside ``storage``'s ``prepare``), never in the
producer: a gateway's request path pays nothing for it. Redaction comes first, before
the turn digests are computed, so a re-sent turn redacts to the same text and is still
recognised as stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mes.privacy.capture import Capture, CapturePolicy
from mes.privacy.redact import Redactor

__all__ = ["Privacy"]


@dataclasses.dataclass(frozen=True)
class Privacy:
    """A capture policy and a redactor (None: nothing is redacted)."""

    policy: CapturePolicy = dataclasses.field(default_factory=CapturePolicy)
    redactor: Redactor | None = None

    @property
    def redacts(self) -> bool:
        return self.redactor is not None and self.redactor.active

    def apply(self, event: dict[str, Any]) -> tuple[Capture, dict[str, int]]:
        """The level at which to store ``event``, after redacting its texts in place
        (the counts per detector: ``{}`` when nothing was found or redaction is off)."""
        level = self.policy.level(event)
        counts = self.redactor.event(event) if self.redactor is not None and self.redactor.active else {}
        return level, counts
