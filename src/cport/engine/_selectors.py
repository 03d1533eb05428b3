"""Selector resolution: which identities does a selector match?

Stage 2 of the pipeline (Cilium's SelectorCache). An inverted index from (source, key) to
value to identity ids answers each requirement with set operations instead of testing every
identity, so resolving 20,000 selectors against 50,000 identities stays fast. Results are
cached per selector and per requirement; adding an identity updates the cached sets in place.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from cport.identity import Labels
from cport.model import Op, Requirement, Selector
from cport.model._selector import cidr_match


class SelectorCache:
    """Identities and the sets of them each selector matches."""

    def __init__(self) -> None:
        self.labels: dict[int, Labels] = {}
        self._index: dict[tuple[str, str], dict[str, set[int]]] = {}
        self._by_key: dict[str, list[tuple[str, str]]] = {}
        self._cidr_ids: set[int] = set()
        self._all: set[int] = set()
        self._req_cache: dict[Requirement, frozenset[int]] = {}
        self._sel_cache: dict[Selector, frozenset[int]] = {}

    def add_identities(self, items: Iterable[tuple[int, Labels]]) -> list[int]:
        """Index new identities; returns the ids that were new. Cached selector results are
        dropped (they are recomputed on demand; see :meth:`matches_one` for single updates)."""
        new: list[int] = []
        for num, labels in items:
            if num in self.labels:
                continue
            new.append(num)
            self.labels[num] = labels
            self._all.add(num)
            for lab in labels:
                sk = (lab.source, lab.key)
                vals = self._index.get(sk)
                if vals is None:
                    vals = self._index[sk] = {}
                    self._by_key.setdefault(lab.key, []).append(sk)
                vals.setdefault(lab.value, set()).add(num)
                if lab.source == "cidr":
                    self._cidr_ids.add(num)
        if new:
            self._req_cache.clear()
            self._sel_cache.clear()
        return new

    def _keys(self, req: Requirement) -> list[tuple[str, str]]:
        if req.source == "any":
            return self._by_key.get(req.key, [])
        return [(req.source, req.key)] if (req.source, req.key) in self._index else []

    def _requirement(self, req: Requirement) -> frozenset[int]:
        hit = self._req_cache.get(req)
        if hit is not None:
            return hit
        op = req.op
        out: set[int] = set()
        if op is Op.CIDR:
            world = self._index.get(("reserved", "world"), {}).get("", set())
            candidates = self._cidr_ids | world
            out = {n for n in candidates if cidr_match(req.values, self.labels[n])}
        elif op in (Op.IN, Op.NOT_IN):
            for sk in self._keys(req):
                vals = self._index[sk]
                for v in req.values:
                    out |= vals.get(v, set())
            if op is Op.NOT_IN:
                out = self._all - out
        elif op in (Op.EXISTS, Op.DOES_NOT_EXIST):
            for sk in self._keys(req):
                for ids in self._index[sk].values():
                    out |= ids
            if op is Op.DOES_NOT_EXIST:
                out = self._all - out
        else:  # GLOB
            for sk in self._keys(req):
                for value, ids in self._index[sk].items():
                    if any(fnmatch.fnmatchcase(value, pat) for pat in req.values):
                        out |= ids
        result = frozenset(out)
        self._req_cache[req] = result
        return result

    def select(self, selector: Selector) -> frozenset[int]:
        """Every known identity `selector` matches (the empty selector matches all)."""
        hit = self._sel_cache.get(selector)
        if hit is not None:
            return hit
        if not selector.requirements:
            result = frozenset(self._all)
        else:
            sets = sorted((self._requirement(r) for r in selector.requirements), key=len)
            acc = sets[0]
            for other in sets[1:]:
                if not acc:
                    break
                acc = acc & other
            result = frozenset(acc)
        self._sel_cache[selector] = result
        return result

    def select_any(self, selectors: Iterable[Selector]) -> frozenset[int]:
        sels = list(selectors)
        if len(sels) == 1:
            return self.select(sels[0])
        out: set[int] = set()
        for sel in sels:
            out |= self.select(sel)
        return frozenset(out)
