"""A model server's prefix KV cache, modelled for the synthetic backend.

The prompt is cut into blocks of `block_chars` characters (a partial last block is not
kept, as a paged KV cache keeps whole blocks), each named by a chained hash (a block's
hash covers everything before it). A request's cached prefix is the leading run of its
blocks the cache holds; the rest must be prefilled. Then all its blocks are kept, least
recently used evicted first, up to `capacity_tokens` (4 characters a token). A request's
blocks are kept deepest first, so its deepest block is the first to go: as vLLM frees a
finished request's blocks tail first, a cache loses a prefix from its end, never its head.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

CHARS_PER_TOKEN = 4


class PrefixCache:
    def __init__(self, capacity_tokens: int, block_chars: int = 64) -> None:
        self.block_chars = block_chars
        self.block_tokens = max(1, block_chars // CHARS_PER_TOKEN)
        self.capacity_blocks = capacity_tokens // self.block_tokens
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.hit_tokens = 0
        self.miss_tokens = 0

    def admit(self, prompt: str) -> int:
        """Look `prompt` up and keep its blocks; the prompt tokens not cached (to prefill)."""
        tokens = max(1, len(prompt) // CHARS_PER_TOKEN)
        hashes: list[bytes] = []
        if self.capacity_blocks > 0:
            prev = b""
            size = self.block_chars
            for i in range(len(prompt) // size):
                block = prompt[i * size : (i + 1) * size].encode()
                prev = hashlib.blake2b(prev + block, digest_size=8).digest()
                hashes.append(prev)
        blocks = self._blocks
        hit = 0
        for h in hashes:
            if h not in blocks:
                break
            hit += 1
        for h in reversed(hashes):
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)
        cached = min(tokens, hit * self.block_tokens)
        self.hit_tokens += cached
        self.miss_tokens += tokens - cached
        return tokens - cached

    def __len__(self) -> int:
        return len(self._blocks)
