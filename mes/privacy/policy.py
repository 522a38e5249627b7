"""What the writer applies to each event before it plans a row: the capture level the
operator's policy gives it, and redaction of its texts.

``Privacy.apply`` runs in the worker (inside ``storage``'s ``prepare``), never in the
producer: a gateway's request path pays nothing for it. Redaction comes first, before
the turn digests are computed, so a re-sent turn redacts to the same text and is still
recognised as stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from mes.privacy.capture import Capture, CapturePolicy
from mes.privacy.redact import Redactor

__all__ = ["Privacy", "without_content"]


@dataclasses.dataclass(frozen=True)
class Privacy:
    """A capture policy and a redactor (None: nothing is redacted)."""

    policy: CapturePolicy = dataclasses.field(default_factory=CapturePolicy)
    redactor: Redactor | None = None

    def apply(self, event: dict[str, Any]) -> tuple[Capture, dict[str, int]]:
        """The level at which to store ``event``, after redacting its texts in place
        (the counts per detector: ``{}`` when nothing was found or redaction is off)."""
        level = self.policy.level(event)
        counts = self.redactor.event(event) if self.redactor is not None else {}
        return level, counts

    def dead_letter(self, payload: bytes) -> tuple[bytes | None, str]:
        """What a dead letter may keep of ``payload`` (an event the worker could not decode
        or store), and a note for its reason (empty: unchanged). An event that reads as a
        JSON object gets its level and redaction as a stored one would (below ``full``:
        ``without_content``); bytes the policy cannot be applied to (not JSON, or fields
        of the wrong kinds) are kept redacted when every level is ``full``, else not at
        all (None): MES cannot tell whether they were allowed to be kept."""
        try:
            event = orjson.loads(payload)
            if not isinstance(event, dict):
                raise TypeError("not an object")
            level = self.policy.level(event)
        except Exception:  # garbage: the rules cannot say what it is
            if self.policy.may_lower():
                return (
                    None,
                    "payload not kept: it did not read as an event, so the capture policy could not apply",
                )
            return self._redacted_bytes(payload)
        if level < Capture.FULL:
            return orjson.dumps(without_content(event)), "kept without its content: capture level below full"
        if self.redactor is None:
            return payload, ""
        try:
            counts = self.redactor.event(event)
        except Exception:  # a part of the wrong kind (or a failing plug-in): the whole text, then
            return self._redacted_bytes(payload)
        return (orjson.dumps(event), "redacted") if counts else (payload, "")

    def _redacted_bytes(self, payload: bytes) -> tuple[bytes | None, str]:
        if self.redactor is None:
            return payload, ""
        text = payload.decode("utf-8", "replace")
        try:
            out = self.redactor.text(text)
        except Exception:  # the plug-in failed: keep nothing rather than what it would have hidden
            return None, "payload not kept: redaction failed on it"
        return (out.encode(), "redacted") if out != text else (payload, "")


def _bare(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    return {"role": message.get("role") or "assistant", "content": None}


def without_content(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` with no words: each message (and each answer) keeps only its
    role; ids, times, model, tokens, the error code and message stay. It still passes the
    contract, so a replay stores it as what it is, rows without content."""
    out = {k: v for k, v in event.items() if k not in ("messages", "response")}
    out["messages"] = [_bare(m) for m in event.get("messages") or ()]
    response = event.get("response")
    if isinstance(response, dict):
        choices = [
            {
                **{k: v for k, v in c.items() if k in ("index", "finish_reason")},
                "message": _bare(c.get("message")),
            }
            for c in response.get("choices") or ()
            if isinstance(c, dict)
        ]
        out["response"] = {k: v for k, v in response.items() if k in ("id", "model", "created", "usage")}
        out["response"]["choices"] = choices
    out["capture"] = "metadata" if event.get("capture") in (None, "full") else event["capture"]
    return out
