"""Content safety in the server: prompts are moderated before they run, outputs while they are
generated (every ``every`` tokens of a choice, everything written since its last check), and a
choice whose output the policy blocks is cancelled at once and ends with finish_reason
"content_filter". What a stream sent before the check that caught it (at most ``every`` tokens)
has been sent; the tokens of the event that tripped the check are not. With the policy's
``redact_pii``, personal data in outputs is replaced by the data layer's scrubber. The
moderator is `lightseek.safety.cascade.Moderator`; nothing here needs to know its stages.
"""

from __future__ import annotations

import asyncio

from lightseek.serve.schemas import ApiError

CHECK_EVERY = 16   # tokens: a violating span is cut off within this many tokens of being complete
WINDOW = 800       # characters one moderation call reads
OVERLAP = 200      # characters each check re-reads from before the last one, for spans across the seam


def policy_of(moderator, ctx) -> str | None:
    """The content policy a request's key names (None: the server's own); a 403 if this server
    does not know it."""
    name = getattr(ctx, "safety_policy", None)
    if moderator is not None and name is not None and name not in moderator.policies:
        raise ApiError(403, f"this key's content policy {name!r} is not configured on this server",
                       code="policy_unavailable")
    return name


async def moderate_input(moderator, texts: list[str], request_id: str, ctx, param: str) -> None:
    """A 400 ``content_policy_violation`` when the policy blocks any of ``texts``; a 403 when the
    key's policy is not configured here (checked before anything runs)."""
    if moderator is None:
        return
    policy = policy_of(moderator, ctx)
    texts = [t for t in texts if t]
    if not texts:
        return
    decisions = await asyncio.to_thread(moderator.check, texts, "input", request_id,
                                        ctx.key_id if ctx is not None else None, policy)
    blocked = sorted({c for d in decisions if d.action == "block" for c in d.categories})
    if blocked:
        from lightseek.safety.policy import CATEGORIES

        names = ", ".join(f"{c} {CATEGORIES[c][0]}" for c in blocked)
        raise ApiError(400, f"the request was refused by this server's content policy ({names})", param=param,
                       code="content_policy_violation")


class OutputGuard:
    def __init__(self, moderator, host, request_id: str, key_id: int | None, policy: str | None = None,
                 every: int = CHECK_EVERY, window: int = WINDOW):
        self.moderator, self.host, self.request_id, self.key_id = moderator, host, request_id, key_id
        self.policy = policy
        self.every, self.window = every, window
        self.pending: dict[int, int] = {}   # tokens since a request's last check
        self.checked: dict[int, int] = {}   # characters of a request's text checked so far
        self.final: set[int] = set()        # requests whose finishing event was taken
        self.scrubber = None
        redact = moderator.policy_for(policy).redact_pii if moderator is not None else []
        if redact:
            from lightseek.data.pipeline.pii import PiiScrubber

            self.scrubber = PiiScrubber(redact)

    @staticmethod
    def filtered(req) -> bool:
        return bool(req.meta.get("filtered"))

    def ended(self, req) -> bool:
        """Its finishing event was taken (``done`` alone is not enough: the engine thread sets it
        before that event reaches this loop), or the policy stopped it."""
        return req.id in self.final or self.filtered(req)

    def feed(self, ev) -> bool:
        """Account for ``ev``; True when its request was just blocked (and cancelled)."""
        r = ev.request
        if ev.finished:
            self.final.add(r.id)
        if self.moderator is None or self.filtered(r):
            return False
        n = self.pending.get(r.id, 0) + len(ev.token_ids)
        if n < self.every and not ev.finished:
            self.pending[r.id] = n
            return False
        self.pending[r.id] = 0
        text = r.text
        start = max(0, self.checked.get(r.id, 0) - OVERLAP)
        windows = [text[i:i + self.window] for i in range(start, max(start + 1, len(text) - OVERLAP),
                                                          self.window - OVERLAP)]
        self.checked[r.id] = len(text)
        decisions = self.moderator.check(windows, "output", self.request_id, self.key_id, self.policy)
        blocked = [d for d in decisions if d.action == "block"]
        if not blocked:
            return False
        d = blocked[0]
        r.meta["filtered"] = d.categories
        if not r.done:
            self.host.cancel(r)
        return True

    def redact(self, text: str) -> str:
        return self.scrubber.scrub(text)[0] if self.scrubber is not None and text else text
