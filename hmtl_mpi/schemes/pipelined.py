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
        bounds = segment_bounds(self.scheme.code, self.job.dim, self.scheme.segments)
        self._post(bounds)
        for a, b in bounds:
            uplink = coding.relay_encode(self.scheme.code, self.i,
                                         {k: iv[a:b] for k, iv in self.own.items()})
            for blk, msg in enumerate(uplink):
                if msg is not None:
                    self.net.isend_to_server(msg, uplink_tag(blk))
            self._forward(it)
        self.ivs = np.empty((self.job.K, self.job.dim))
        for j, (a, b) in enumerate(bounds):
            self._forward(it, upto=j)
            self._decode(it, j, a, b)
        self.net.drain(f"the uplink and forwarded pieces of iteration {it}")

    def _post(self, bounds) -> None:
        """Every receive of the exchange, posted before any work, so that a piece arriving
        early is never held up: per segment, this relay's piece from the server and the
        other relays' pieces (an empty piece, of a broadcast shorter than H bytes, is
        neither sent nor awaited)."""
        code, H, i, net = self.scheme.code, self.job.H, self.i, self.net
        self._others = [h for h in range(H) if h != i]
        self._counts = [scatter_layout(coding.downlink_size(code, b - a), H)[0]
                        for a, b in bounds]
        self._senders = [[h for h in self._others if c[h]] for c in self._counts]
        self._from_server = [net.post_from_server((c[i],), np.uint8, TAG_PIECE) if c[i]
                             else None for c in self._counts]
        self._from_relays = [net.post_from_relays(hs, (c[0],), np.uint8, TAG_PIECE)
                             for c, hs in zip(self._counts, self._senders)]
        self._next = 0                           # the next piece to forward

    def _forward(self, it, upto: int = -1) -> None:
        """Forward this relay's pieces of the broadcast to the other relays, in segment
        order: those of segments up to ``upto``, waiting for them, then every later one
        that has already arrived."""
        while self._next < len(self._from_server):
            j, posted = self._next, self._from_server[self._next]
            if posted is not None:
                if j <= upto:
                    self.net.first(posted, 1, f"piece {self.i + 1} of segment {j + 1} of the "
                                   f"broadcast of iteration {it} from the server")
                elif not self.net.ready(posted):
                    return
                self.net.isend_to_relays(posted[1][0], self._others, TAG_PIECE)
            self._next += 1

    def _decode(self, it, j: int, a: int, b: int) -> None:
        """Segment j (values a..b of every IV): its broadcast from the pieces, its escapes
        if it has any, every IV's slice decoded into ``self.ivs``."""
        code, H, i, net = self.scheme.code, self.job.H, self.i, self.net
        got = dict(net.first(self._from_relays[j], len(self._senders[j]), f"the other "
                             f"relays' pieces of segment {j + 1} of the broadcast of "
                             f"iteration {it}"))
        pieces = {h: np.zeros(0, np.uint8) for h in range(H)}
        if self._from_server[j] is not None:
            pieces[i] = self._from_server[j][1][0]
        pieces.update({self._senders[j][n]: buf for n, buf in got.items()})
        first = np.concatenate([pieces[h][: self._counts[j][h]] for h in range(H)])
        extra = coding.downlink_escape_bytes(code, first)
        escapes = first[:0]
        if extra:                                # relay j mod H got them from the server
            owner = j % H
            posted = (net.post_from_server((extra,), np.uint8, TAG_PIECE_ESCAPES)
                      if owner == i else
                      net.post_from_relays([owner], (extra,), np.uint8, TAG_PIECE_ESCAPES))
            (_, escapes), = net.first(posted, 1, f"the escapes of segment {j + 1} of "
                                      f"iteration {it}")
            if owner == i:
                net.isend_to_relays(escapes, self._others, TAG_PIECE_ESCAPES)
        d = b - a
        own = {k: iv[a:b] for k, iv in self.own.items()}
        ivs = coding.relay_decode(code, i, own, coding.downlink_unwire(code, first, escapes, d),
                                  d)
        for k in range(self.job.K):
            self.ivs[k, a:b] = ivs[k]


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
