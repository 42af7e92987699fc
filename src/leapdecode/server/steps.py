"""Per-step events of a streamed reply (`stream_options: {"include_steps": true}`).

Each decoding step becomes one JSON object, sent in a chunk of its own (`leapdecode.step`) before
the text it produced:

    {"step": 3, "tokens": [ids kept], "text": [one piece per token], "accepted": 2, "drafted": 8,
     "alternatives": [[texts the draft also offered at each token's position], ...]}

`tokens[:accepted]` came from the draft (the target agreed), the token after them is the bonus,
the target's own choice; a step with `drafted` 0 decoded one token plainly. Alternatives are
single tokens' texts, special tokens spelled out (an offered end of turn shows as such). The pieces are the
text each token adds to the reply, held back like the text deltas (a partial UTF-8 character, a
tail that may grow into a stop string), so the pieces of all steps join to the reply's text.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..engine import Generation, Stream, _cut_at_stop, _safe_prefix


class StepEvents:
    """Turns the steps a Stream records into step events, a batch each time it is asked."""

    def __init__(self, tokenizer: Any, stream: Stream):
        self.tokenizer = tokenizer
        self.stream = stream.record_steps()
        self.stops: Sequence[str] = stream.config.stop
        self.done = 0  # steps already sent
        self.kept = 0  # reply tokens those steps covered
        self.text = ""  # the text their pieces covered

    def new(self) -> list[dict[str, Any]]:
        """Events of the steps recorded since the last call (while decoding)."""
        return self._events(self.stream.tokens, None)

    def last(self, result: Generation) -> list[dict[str, Any]]:
        """Events of the remaining steps once the stream is done: its stop rules may have cut the
        last step's tokens, and the last piece takes whatever text was still held back."""
        events = self._events(result.token_ids, result.text)
        tail = result.text[len(self.text):] if result.text.startswith(self.text) else ""
        if tail and events and events[-1]["text"]:
            events[-1]["text"][-1] += tail
            self.text = result.text
        return events

    def _events(self, tokens: list[int], final: str | None) -> list[dict[str, Any]]:
        events, steps = [], self.stream.steps or []
        while self.done < len(steps):
            step = steps[self.done]
            keep = min(len(step.tokens), len(tokens) - self.kept)
            if keep <= 0 and final is None:  # not yet in the stream's tokens
                break
            self.done += 1
            pieces = [self._piece(tokens[: self.kept + i + 1], final) for i in range(keep)]
            self.kept += keep
            if keep > 0:
                events.append({"step": self.done, "tokens": list(step.tokens[:keep]), "text": pieces,
                               "accepted": step.accepted, "drafted": step.drafted,
                               "alternatives": [[self._decode([t], skip_special=False) for t in alts]
                                                for alts in step.alternatives[:keep]]})
        return events

    def _piece(self, prefix: list[int], final: str | None) -> str:
        """The text the last token of `prefix` adds to what the pieces so far covered."""
        text, _ = _cut_at_stop(self._decode(prefix), self.stops)
        if final is None or not final.startswith(text):
            text = _safe_prefix(text, self.stops)
        if len(text) <= len(self.text) or not text.startswith(self.text):
            return ""  # held back (a partial character, a possible stop string): a later piece has it
        piece, self.text = text[len(self.text):], text
        return piece

    def _decode(self, ids: list[int], skip_special: bool = True) -> str:
        """The reply's text skips special tokens (as the stream's does); an alternative shows them."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special)
