"""The pipelined coded exchange (``--segments J``): the relay<->server leg of both coded
schemes cut into J segments that overlap on the wire (docs/pipeline.md).

Every IV (``dim`` float64 values) is cut into J contiguous slices, and each slice goes
through the unchanged coding calls (:func:`hmtl_mpi.codes.coding.relay_encode`,
``server_combine``, ``downlink_wire`` / ``downlink_unwire``, ``relay_decode``) with
``dim`` = the slice's length. Every coding call is linear column by column, so a slice
decodes into the same values as the whole IV would: lossless by construction, and the
codes are not touched. Slices are multiples of ``m = lcm(F) / gcd(lcm(F), 4)`` values
(:func:`granule`, F over the code's blocks), so that ``4 m`` symbols cut into whole units
of every block: only the last slice is padded, and the payload bytes equal the
unsegmented exchange's. The extra bytes are the broadcast's header, an 8-byte escape
count per block, once per segment instead of once (the report's
``downlink_header_bytes``), and the escapes themselves (a coded symbol equal to 65536),
whose number depends on how the symbols were grouped (the report's ``escape_bytes``).

Per iteration (one step, ``exchange``):

* A relay posts every receive of the exchange first (for each segment: its piece of
  the broadcast from the server and every other relay's piece), then encodes segment
  after segment, sending each as soon as it is encoded (non-blocking; one message per
  block, as today) and forwarding any piece of the broadcast that has arrived
  meanwhile. Then, segment by segment: it forwards its piece, gathers the others,
  and decodes, while the later segments travel.
* The server takes segment j's uplink from every relay (messages between two ranks
  with one tag arrive in the order they were sent, so segment j is the j-th message
  of each tag), combines it and sends piece i of its broadcast to relay i alone (one
  copy leaves the server, as with the scatter and allgather of the unsegmented
  exchange); relay i forwards it to the other relays, point to point, so a relay busy
  decoding holds up nobody's next segment (a collective per segment would). A
  segment's escape positions, when there are any, go to relay ``j mod H``, which
  forwards them.

Bytes are counted where they are today: ``relay_to_server`` (the uplink),
``server_to_relay`` (the broadcast, once), ``relay_to_relay`` (the forwarding).
"""

from __future__ import annotations

import math

import numpy as np

from ..codes import coding
from ..vocabulary import (RELAY, SERVER, TAG_PIECE, TAG_PIECE_ESCAPES, scatter_layout,
                          uplink_tag)
from .base import CodedRelay, CodedServer

PIPELINED_STEPS = (
    ("local_update", "local_update"),
    ("user_to_relay", "user_to_relay"),
    ("exchange", "exchange"),                # encode .. decode, segments overlapped
    ("global_update", "global_update"),
    ("relay_to_user", "relay_to_user"),
)

MAX_SEGMENTS = 4096          # --segments' upper bound (a segment is at least one value)


def granule(code: coding.Code) -> int:
    """m: the values of an IV slice that cut into whole units of every block (4 m a
    multiple of every block's F)."""
    F = math.lcm(*(int(b.F) for b in code.blocks)) if code.blocks else 1
    return F // math.gcd(F, coding.SYMBOLS_PER_VALUE)


def segment_bounds(code: coding.Code, dim: int, J: int) -> list:
    """The J slices of a dim-value IV as (start, stop) value indices: multiples of
    :func:`granule` but the last, near-equal in granules. Fewer than J when the IV has
    fewer than J granules."""
    m = granule(code)
    n = -(-dim // m)
    J = max(1, min(int(J), n))
    cuts = [min(dim, m * ((n * j) // J)) for j in range(J + 1)]
    return [(cuts[j], cuts[j + 1]) for j in range(J)]


class PipelinedRelay(CodedRelay):
    """A relay of the pipelined exchange (see the module doc)."""

    def exchange(self, it):
        code, job, net, i = self.scheme.code, self.job, self.net, self.i
        H, bounds = job.H, segment_bounds(self.scheme.code, job.dim, self.scheme.segments)
        others = [h for h in range(H) if h != i]
        counts = [scatter_layout(coding.downlink_size(code, b - a), H)[0] for a, b in bounds]
        # every receive posted before any work: a piece arriving early is never held up
        # (an empty piece, of a broadcast shorter than H bytes, is neither sent nor awaited)
        senders = [[h for h in others if c[h]] for c in counts]
        from_server = [net.post_from_server((c[i],), np.uint8, TAG_PIECE) if c[i] else None
                       for c in counts]
        from_relays = [net.post_from_relays(hs, (c[0],), np.uint8, TAG_PIECE)
                       for c, hs in zip(counts, senders)]
        state = {"next": 0}                      # the next piece to forward, in segment order

        def forward(upto: int, wait: bool) -> None:
            while state["next"] < len(bounds) and (state["next"] <= upto or not wait):
                j = state["next"]
                if from_server[j] is None:
                    pass
                elif wait and j <= upto:
                    net.first(from_server[j], 1, f"piece {i + 1} of segment {j + 1} of the "
                              f"broadcast of iteration {it} from the server")
                elif not net.ready(from_server[j]):
                    return
                if from_server[j] is not None:
                    net.isend_to_relays(from_server[j][1][0], others, TAG_PIECE)
                state["next"] += 1

        for a, b in bounds:
            uplink = coding.relay_encode(code, i, {k: iv[a:b] for k, iv in self.own.items()})
            for blk, msg in enumerate(uplink):
                if msg is not None:
                    net.isend_to_server(msg, uplink_tag(blk))
            forward(-1, wait=False)
        self.ivs = np.empty((job.K, job.dim))
        for j, (a, b) in enumerate(bounds):
            forward(j, wait=True)
            forward(-1, wait=False)
            got = dict(net.first(from_relays[j], len(senders[j]), f"the other relays' pieces "
                                 f"of segment {j + 1} of the broadcast of iteration {it}"))
            pieces = {h: np.zeros(0, np.uint8) for h in range(H)}
            if from_server[j] is not None:
                pieces[i] = from_server[j][1][0]
            pieces.update({senders[j][n]: buf for n, buf in got.items()})
            first = np.concatenate([pieces[h][: counts[j][h]] for h in range(H)])
            extra = coding.downlink_escape_bytes(code, first)
            escapes = first[:0]
            if extra:
                owner = j % H
                posted = (net.post_from_server((extra,), np.uint8, TAG_PIECE_ESCAPES)
                          if owner == i else
                          net.post_from_relays([owner], (extra,), np.uint8, TAG_PIECE_ESCAPES))
                (_, escapes), = net.first(posted, 1, f"the escapes of segment {j + 1} of "
                                          f"iteration {it}")
                if owner == i:
                    net.isend_to_relays(escapes, others, TAG_PIECE_ESCAPES)
            d = b - a
            own = {k: iv[a:b] for k, iv in self.own.items()}
            ivs = coding.relay_decode(code, i, own, coding.downlink_unwire(code, first, escapes, d), d)
            for k in range(job.K):
                self.ivs[k, a:b] = ivs[k]
        net.drain(f"the uplink and forwarded pieces of iteration {it}")


class PipelinedServer(CodedServer):
    """The server of the pipelined exchange (see the module doc)."""

    def __init__(self, scheme, job, net, index=0):
        super().__init__(scheme, job, net, index)
        self.escape_bytes = {"relay_to_server": 0, "server_to_relay": 0}

    def exchange(self, it):
        code, job, net = self.scheme.code, self.job, self.net
        H, nb = job.H, len(code.blocks)
        for j, (a, b) in enumerate(segment_bounds(code, job.dim, self.scheme.segments)):
            d = b - a
            sizes = {(i, uplink_tag(blk)): coding.uplink_symbols(code, blk, i, d)
                     for blk in range(nb) for i in range(H)}
            got = net.recv_coded_from_relays([key for key, n in sizes.items() if n > 0])
            self.escape_bytes["relay_to_server"] += sum(2 * (buf.size - sizes[key])
                                                        for key, buf in got.items())
            down = [coding.server_combine(code, blk, {i: got.get((i, uplink_tag(blk)))
                                                      for i in range(H)}, d)
                    for blk in range(nb)]
            first, escapes = coding.downlink_wire(code, down, d)
            counts, displs = scatter_layout(first.size, H)
            for i in range(H):         # piece i to relay i only: one copy leaves the server
                if counts[i]:
                    net.isend_to_relays(first[displs[i]: displs[i] + counts[i]], [i], TAG_PIECE)
            if escapes.size:
                net.isend_to_relays(escapes, [j % H], TAG_PIECE_ESCAPES)
                self.escape_bytes["server_to_relay"] += int(escapes.size)
        net.drain(f"the pieces of the broadcast of iteration {it}")

    def results(self):
        """What the report says of the segments: their lengths, the headers and escapes."""
        code, dim = self.scheme.code, self.job.dim
        bounds = segment_bounds(code, dim, self.scheme.segments)
        return {"segment_values": [b - a for a, b in bounds],
                "downlink_header_bytes": 8 * len(code.blocks) * len(bounds),
                "escape_bytes": dict(self.escape_bytes)}


class _Steps:
    """A scheme's steps: the pipelined ones on an instance with J > 1, else the base's."""

    def __get__(self, obj, cls):
        if obj is not None and obj.segments > 1:
            return PIPELINED_STEPS
        return super(Pipelines, cls).steps


class Pipelines:
    """Mixin of the coded and joint schemes: with ``segments`` J > 1 (set on every rank
    before the loop, :mod:`hmtl_mpi.job.segments`) the relay<->server leg is the
    pipelined exchange, one step. Put before the scheme's base class."""

    segments = 1                 # J (1: the unsegmented exchange)
    segments_reason = "--segments 1 (default): the unsegmented exchange"
    can_segment = True

    steps = _Steps()

    def part(self, role, job, net, index=0):
        if self.segments > 1 and role in (SERVER, RELAY):
            return (PipelinedServer if role == SERVER else PipelinedRelay)(self, job, net, index)
        return super().part(role, job, net, index)

    def downlink_method(self, requested, flat):
        if self.segments > 1:
            return "pipelined: pieces from the server, forwarded relay to relay"
        return super().downlink_method(requested, flat)

    def report_fields(self):
        return dict(super().report_fields(), segments=self.segments,
                    segments_reason=self.segments_reason)
