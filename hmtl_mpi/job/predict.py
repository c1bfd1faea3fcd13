"""Predict when coding pays: eq. (13) fed with measured link rates and coding speed.

Before a run, rank 0 knows every scheme's plan (how many IVs cross each link per
iteration, :meth:`hmtl_mpi.schemes.base.Scheme.link_loads`, and how many symbols
its coding kernels read, :meth:`~hmtl_mpi.schemes.base.Scheme.coding_work`), and
has measured the links and the kernel (:mod:`hmtl_mpi.wire.probe`): per link class a
latency ``a`` and a rate ``b`` (seconds per message and bytes per second), and
the kernel's input bytes per second. A phase that moves ``n`` messages of ``B``
bytes in all over one link in ``n`` rounds of messages (messages sent at once are
one round) is predicted to take ``n a + B / b``: eq. (13)'s ``L V / W`` plus a
latency per round, which is what dominates with small IVs.

Links, as ``launch/netns-run`` builds them (and as the paper's model has them):

* user -> relay and relay -> user: every user has its own W1 link, so the phase
  takes as long as the busiest user's share (``user_up_max`` IVs sent,
  ``user_down_max`` received), in one round (``user_rounds``: with several users per
  rank, the rank's link carries them all, one user after the other:
  :func:`hmtl_mpi.job.hosting.rank_link_loads`);
* relay -> server and server -> relay: the server's one W2 link carries every
  relay's uplink (``relay_to_server`` IVs) and the broadcast
  (``server_to_relay`` IVs), in ``uplink_rounds`` / ``downlink_rounds`` rounds.
  When every relay's own link was measured (``links["relays"]``, rates R_i, and
  ``links["server"]``, the server's link S under all of them: ``--relay-rates``), a
  direction takes ``max(max_i L_i V / R_i, sum_i L_i V / S)`` instead, with L_i relay
  i's share (``per_relay_up``; ``per_relay_down``: its part of the broadcast's scatter
  or its home users' models), the time model of ``--plan time`` (docs/bandwidth.md).

Coding (``encode`` at the busiest relay, ``combine`` at the server, ``decode`` at
the busiest relay) takes its input bytes over the kernel's measured speed. The
learning itself (local and global updates) is the same work in every scheme and
is left out: the prediction is of what the schemes change; the run measures all.
``--scheme auto`` (:mod:`hmtl_mpi.job.auto`) predicts whole iterations instead: the
links' bytes from here, plus the learning and each scheme's measured fixed cost.
"""

from __future__ import annotations

from ..planning.bandwidth import uplink_seconds

LINK_PHASES = ("user_to_relay", "relay_to_server", "server_to_relay", "relay_to_user")
CODING_PHASES = ("encode", "decode")


def phase_seconds(loads: dict, iv_bytes: int, links: dict, coding_bytes: dict,
                  coding_Bps: float) -> dict:
    """Predicted seconds per phase and in all (``total``) for one iteration.

    ``loads``: :meth:`Scheme.link_loads` (IVs and messages per link class);
    ``links``: per link class ``(latency_s, bytes_per_s)`` as measured
    (:func:`hmtl_mpi.wire.probe.measure_links`; keys ``w1`` and ``w2``);
    ``coding_bytes``: kernel input bytes per iteration (``encode``, ``combine``,
    ``decode``); ``coding_Bps``: the kernel's measured input bytes per second.
    """
    a1, b1 = links["w1"]
    a2, b2 = links["w2"]
    V = float(iv_bytes)
    up, down = loads["relay_to_server"] * V / b2, loads["server_to_relay"] * V / b2
    if links.get("relays") and "per_relay_up" in loads:
        rates = [r for _, r in links["relays"]]
        up = uplink_seconds(loads["per_relay_up"], rates, V, links.get("server"))
        down = uplink_seconds(loads["per_relay_down"], rates, V, links.get("server"))
    out = {
        "user_to_relay": loads.get("user_rounds", 1) * a1 + loads["user_up_max"] * V / b1,
        "relay_to_server": loads["uplink_rounds"] * a2 + up,
        "server_to_relay": loads["downlink_rounds"] * a2 + down,
        "relay_to_user": loads.get("user_rounds", 1) * a1 + loads["user_down_max"] * V / b1,
    }
    work = {k: float(coding_bytes.get(k, 0)) / coding_Bps for k in ("encode", "combine", "decode")}
    out["encode"] = work["encode"] + work["combine"]        # the report's "encode" holds both
    out["decode"] = work["decode"]
    out["total"] = sum(out[p] for p in LINK_PHASES + CODING_PHASES)
    return out


def saving_pct(coded_s: float, uncoded_s: float) -> float:
    """How much less time the first takes than the second, in % of the second."""
    return 100.0 * (uncoded_s - coded_s) / uncoded_s if uncoded_s > 0 else float("nan")


def verdict(predicted: dict, baseline: str) -> list:
    """One line per scheme: predicted time per iteration and against ``baseline``."""
    base = predicted[baseline]["total"]
    lines = []
    for name, p in predicted.items():
        line = (f"{name} {1e3 * p['total']:.2f} ms (relay<->server "
                f"{1e3 * (p['relay_to_server'] + p['server_to_relay']):.2f}, user<->relay "
                f"{1e3 * (p['user_to_relay'] + p['relay_to_user']):.2f}, coding "
                f"{1e3 * (p['encode'] + p['decode']):.2f})")
        if name != baseline:
            s = saving_pct(p["total"], base)
            line += f": {abs(s):.0f}% {'less' if s >= 0 else 'more'} than {baseline}"
        lines.append(line)
    return lines
