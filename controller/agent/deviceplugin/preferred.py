"""GetPreferredAllocation: which of the free devices a container should get. Pure, deterministic.

kubelet asks before it allocates: "from these available IDs, including these
must-include IDs, which N?". A multi-GPU job runs fastest when its GPUs talk
over NVLink, and a node stays useful when small jobs do not break up the
NVLink groups that big jobs need. So candidate sets are ranked by, in order:

1. fewest distinct physical GPUs (only matters for MIG slices: pack slices
   onto as few GPUs as possible);
2. every pair of GPUs NVLink-connected, then the most connected pairs;
3. fewest NVLink links cut to free devices left outside the set (a 1-GPU job
   takes a GPU without NVLink peers before one from an NVLink group);
4. fewest PCI domains, then the smallest index spread (NVML indexes follow
   PCI bus order, so nearby indexes usually share a switch or root port);
5. lowest indexes, so equal choices always come out the same.

NVLink peers come from `Gpu.nvlink_peers`, read once when the inventory is
built: NVIDIA's plugin was reported to spend ~0.6 s per NVLink query here.
Up to `EXHAUSTIVE_LIMIT` candidate sets are ranked exhaustively (an 8-GPU node
has at most 70); beyond that a greedy pass (add the best next device, one at
a time) keeps the cost bounded.

The answer is advice: kubelet may allocate otherwise. Unknown IDs (a stale
kubelet view) are never preferred but still fill the size when nothing else can.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

from controller.agent.inventory import Gpu, Slot

EXHAUSTIVE_LIMIT = 500
"""Most candidate sets ranked one by one (about 2 ms on a slow core); more go greedy."""

GpuRank = tuple[int, bool, int, int, int, int]


def _pci_domain(gpu: Gpu) -> str:
    return gpu.pci_bus_id.split(":", 1)[0].lower() if gpu.pci_bus_id else ""


def _position(slot: Slot) -> tuple[int, int]:
    return (slot.gpu.index, slot.mig.placement_start if slot.mig else 0)


class _Topology:
    """The GPUs under some slots as bits, and each GPU's NVLink peers as a mask of bits.

    Built once per request, so ranking a candidate set costs a few integer
    operations per GPU; the rank depends only on which GPUs a set covers,
    so it is cached per mask (many sets of MIG slices cover the same GPUs).
    """

    def __init__(self, slots: Sequence[Slot]) -> None:
        gpus = {s.gpu.index: s.gpu for s in slots}
        self.bit = {index: 1 << n for n, index in enumerate(sorted(gpus))}
        self.index = {self.bit[i]: i for i in gpus}
        self.domain = {self.bit[i]: _pci_domain(g) for i, g in gpus.items()}
        self.every = sum(self.bit.values())
        self.peers = {
            self.bit[a.index]: sum(
                self.bit[b.index]
                for b in gpus.values()
                if b is not a and (b.index in a.nvlink_peers or a.index in b.nvlink_peers)
            )
            for a in gpus.values()
        }
        self.rank = functools.cache(self._rank)

    def mask(self, slots: Iterable[Slot]) -> int:
        out = 0
        for s in slots:
            out |= self.bit[s.gpu.index]
        return out

    def _rank(self, inside: int) -> GpuRank:
        """Rank (lower is better) of taking the GPUs in ``inside``; all others stay free."""
        outside = self.every & ~inside
        bits = [b for b in self.index if b & inside]
        linked = sum((self.peers[b] & inside).bit_count() for b in bits) // 2
        cut = sum((self.peers[b] & outside).bit_count() for b in bits)
        indexes = [self.index[b] for b in bits]
        return (
            len(bits),
            linked != len(bits) * (len(bits) - 1) // 2,
            -linked,
            cut,
            len({self.domain[b] for b in bits}),
            max(indexes) - min(indexes) if indexes else 0,
        )


def _dedupe(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def preferred(
    slots: Mapping[str, Slot], available: Sequence[str], must_include: Sequence[str], size: int
) -> list[str]:
    """The IDs to allocate: ``must_include`` first, then the best-ranked rest, ``size`` in all."""
    must = _dedupe(must_include)
    must_set = set(must)
    pool = [i for i in _dedupe(available) if i not in must_set]
    need = size - len(must)
    if need <= 0:
        return must
    known = sorted((i for i in pool if i in slots), key=lambda i: _position(slots[i]))
    unknown = sorted(i for i in pool if i not in slots)
    if need >= len(known):
        return [*must, *known, *unknown[: need - len(known)]]

    fixed = [slots[i] for i in must if i in slots]
    topology = _Topology([*fixed, *(slots[i] for i in known)])
    base = topology.mask(fixed)
    bits = [topology.bit[slots[i].gpu.index] for i in known]

    def rank(picks: tuple[int, ...]) -> tuple[GpuRank, tuple[int, ...]]:
        # ``picks`` index ``known`` in position order, so comparing sorted
        # picks breaks ties by lowest positions.
        inside = base
        for k in picks:
            inside |= bits[k]
        return topology.rank(inside), picks

    if math.comb(len(known), need) <= EXHAUSTIVE_LIMIT:
        best = min(itertools.combinations(range(len(known)), need), key=rank)
    else:
        best = ()
        for _ in range(need):
            rest = [k for k in range(len(known)) if k not in best]
            best = min((tuple(sorted((*best, k))) for k in rest), key=rank)
    return [*must, *(known[k] for k in best)]
