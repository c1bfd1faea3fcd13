"""``--plan time``: the coded schemes re-planned for the links the probe measured.

At start-up every scheme is planned on rank 0 with the papers' load-optimal plan. The
probe (:func:`hmtl_mpi.wire.probe.measure_relays`) then measures every relay's own link
to the server and the server's link under all of them; with ``--plan time`` rank 0 makes,
for every scheme that has a load plan to choose (:attr:`Scheme.has_load_plan`), the
time-optimal plan for those rates (:mod:`hmtl_mpi.planning.bandwidth`) and its code, and
broadcasts it as set-up broadcast the first one. Both plans go into the report
(``plans``: per-relay loads and predicted uplink seconds) and are printed side by side.
"""

from __future__ import annotations

from ..vocabulary import WORLD


def replan_for_time(config, endpoint, G, schemes: list, rates) -> None:
    """With ``--plan time``: replace, in ``schemes``, every scheme that has a load plan by
    its time-optimal plan for ``rates`` (rank 0's measurements). Collective over the world."""
    if config.plan != "time":
        return
    for b, scheme in enumerate(schemes):
        if not scheme.has_load_plan:
            continue
        new = None
        if endpoint.rank == 0:
            try:
                new = type(scheme).plan(G, seed=config.seed, plan="time",
                                        relay_rates=[r for _, r in rates["relays"]],
                                        server_rate=rates["server"])
            except (ValueError, RuntimeError) as exc:    # an LP that did not solve
                print(f"hmtl_mpi: --plan time for {scheme.name}: no time plan ({exc}); the "
                      f"load plan is kept", flush=True)
                new = scheme
        if endpoint.rank == 0 and new.timed is not None:
            tp = new.timed
            V = 8 * (config.dim or 0)
            print(f"hmtl_mpi: --plan time for {scheme.name}: relay uplink loads "
                  f"{', '.join(f'{float(x):.3g}' for x in tp.load_relay_loads)} (load plan) -> "
                  f"{', '.join(f'{float(x):.3g}' for x in tp.relay_loads)} ({tp.source}); "
                  f"slowest relay's uplink predicted {1e3 * tp.seconds(V, tp.load_plan):.4g} -> "
                  f"{1e3 * tp.seconds(V):.4g} ms", flush=True)
        buf = endpoint.bcast_bytes(WORLD, new.to_buffer() if new is not None else None, 0,
                                   f"the {scheme.name} scheme's time-optimal plan")
        schemes[b] = new if new is not None else type(scheme).from_buffer(G, buf)
