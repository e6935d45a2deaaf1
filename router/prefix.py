"""Prompt prefixes as chained block hashes: what `cache_aware` routing keys on.

The function is specified in docs/prefix.md (with test vectors in tests/vectors/), so a
client in any language can send `prefix_hashes` instead of its prompt:

* the prompt's text: OpenAI `messages` (each message's text content, joined by "\\n"),
  else `prompt` (a string, or a list of strings joined by "\\n"; OpenAI and Bytez), else
  TGI `inputs`;
* cut into blocks of `BLOCK_CHARS` characters (Unicode code points); a last, partial
  block is not hashed (a KV cache keeps whole blocks only), and at most `MAX_BLOCKS`;
* `h_1 = BLAKE2b-64(block_1)`, `h_i = BLAKE2b-64(h_{i-1} || block_i)` over the block's
  UTF-8 bytes, each sent as 16 lowercase hex digits. A hash names its block *and*
  everything before it, so two prompts share `h_i` exactly when they share the first
  `i` blocks.

Everything here is pure: values in, values out; the prefix index that remembers which
worker was sent which blocks lives in the stores (router/state/prefixes.py and the
Redis scripts).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BLOCK_CHARS = 128  # ~32 tokens of English text: fine enough for chats that grow per turn
MAX_BLOCKS = 256  # 32 KiB of prompt; what lies further is not indexed
HASH_HEX = 16  # hex digits per hash (BLAKE2b with a 64-bit digest)
MAX_MESSAGES = 4096  # a /route body's `messages`: more is refused (hostile input)
_HEX = re.compile(r"[0-9a-f]{16}")


class BadPrefix(ValueError):
    """A /route body's prompt fields are not of the documented shape."""


def block_hashes(text: str, limit: int = MAX_BLOCKS) -> list[str]:
    """The chained hashes of the whole `BLOCK_CHARS` blocks of `text` (docs/prefix.md)."""
    n = min(len(text) // BLOCK_CHARS, limit)
    out: list[str] = []
    prev = b""
    blake = hashlib.blake2b
    for i in range(n):
        block = text[i * BLOCK_CHARS : (i + 1) * BLOCK_CHARS].encode()
        prev = blake(prev + block, digest_size=8).digest()
        out.append(prev.hex())
    return out


def _content(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # parts: [{"type": "text", "text": ...}, {"type": "image_url"}]
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return None


def messages_text(messages: Sequence[Any]) -> str | None:
    """The text of an OpenAI `messages` list, or None if it is not one."""
    parts: list[str] = []
    for m in messages:
        text = _content(m)
        if text is None:
            return None
        parts.append(text)
    return "\n".join(parts)


def prompt_text(doc: Any) -> str | None:
    """The prompt of a request body (OpenAI, TGI, Bytez), or None if it names none.

    Never raises: proxy mode calls it on whatever JSON a client sent.
    """
    if not isinstance(doc, dict):
        return None
    messages = doc.get("messages")
    if isinstance(messages, list) and messages:
        return messages_text(messages)
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    inputs = doc.get("inputs")
    return inputs if isinstance(inputs, str) else None


def request_hashes(doc: Any) -> list[str]:
    """The block hashes of a proxied request's body ([] without a prompt)."""
    text = prompt_text(doc)
    return block_hashes(text) if text else []


def route_hashes(body: dict[str, Any]) -> list[str] | None:
    """The block hashes a `/route` body asks to be routed by, or None if it names none.

    `prefix_hashes` (a client's own, checked), else `messages`, else `prompt`; none of
    them is signed into the ticket. Raises BadPrefix on a field of the wrong shape.
    """
    given = body.get("prefix_hashes")
    if given is not None:
        if not isinstance(given, list) or len(given) > MAX_BLOCKS:
            raise BadPrefix(f"prefix_hashes must be a list of at most {MAX_BLOCKS} hashes")
        for h in given:
            if not isinstance(h, str) or not _HEX.fullmatch(h):
                raise BadPrefix("prefix_hashes must hold 16 lowercase hex digits each")
        return list(given)
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
            raise BadPrefix(f"messages must be a list of at most {MAX_MESSAGES} messages")
        text = messages_text(messages)
        if text is None:
            raise BadPrefix("each message must be an object whose content is text or parts")
        return block_hashes(text)
    prompt = body.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise BadPrefix("prompt must be a string")
        return block_hashes(prompt)
    return None


@dataclass(frozen=True, slots=True)
class Match:
    """What the prefix index knows of a request: the deepest block some worker holds."""

    depth: int  # leading blocks matched (0: none)
    blocks: int  # blocks in the request
    holders: tuple[str, ...]  # the workers holding all `depth` of them


NO_MATCH = Match(0, 0, ())


def deepest(n: int, holders_at: Callable[[int], list[str]]) -> tuple[int, list[str]]:
    """The most leading blocks (of `n`) some worker holds, and who holds that many.

    `holders_at(i)` lists the workers holding block `i` (1-based) now. Blocks are
    recorded and aged as whole prefixes (a worker holding block i holds 1..i-1), so a
    binary search finds the depth in log2(n) probes, and a request sharing nothing
    costs one. Its Lua twin is DEEPEST_LUA in state/redis_scripts.py.
    """
    if n <= 0:
        return 0, []
    found = holders_at(1)
    if not found:
        return 0, []
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        got = holders_at(mid)
        if got:
            lo, found = mid, got
        else:
            hi = mid - 1
    return lo, found
