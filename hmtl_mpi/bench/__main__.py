"""Benchmarks: ``python -m hmtl_mpi.bench {plan,coding,mocha,runtime,startup,network,schemes,hgc,tolerant,loads,paper,users,rates,auto,recovery,cutend,cpu,pipeline} [options]``.

Each prints measured figures next to a reference measured in the same run; each
takes ``--help``. They are benchmarks, not tests: nothing here asserts a speed.

* plan     the load planners at K = 2,000, H = 50; ``--scale``: K = 1,000 to 100,000 with
           the code's build and peak memory (:mod:`.plan`, :mod:`.scale`)
* coding   encode / combine / decode throughput next to memcpy and galois; ``--scale``: at
           K = 1,000 to 100,000, structured against random where it can be built (:mod:`.coding`)
* mocha    MOCHA's local update, numba kernel vs reference (:mod:`.mocha`)
* runtime  the MPI job on this machine at several IV sizes (:mod:`.runtime`)
* network  the paper's Fig. 5-7 settings on the emulated cluster of ``launch/netns-run``
           (root; :mod:`.network`)
* startup  the default job's wall time against a bare MPI start, and a barrier's cost
           (:mod:`.startup`)
* schemes  uncoded, coded and joint side by side on the emulated cluster (root; :mod:`.schemes`)
* hgc      gradient coding under injected stragglers: uncoded, gc, hgc, hgc-jncss (:mod:`.hgc`)
* tolerant a slow relay: coded and joint waiting for it, and with --relay-stragglers
           (:mod:`.tolerant`)
* loads    the paper's Fig. 3 / Fig. 4: planned loads over random placements, no MPI (:mod:`.loads`)
* paper    every figure of the paper (Figs. 3-7) into one folder (root for 5-7; :mod:`.paper`)
* users    K = 1,000 users on 21 MPI ranks (``--users-per-rank``) against one rank per user
           in one process: wall time, memory, loads, digests (:mod:`.users`)
* rates    one slow relay link: the time-optimal plan against the load plan and uncoded
           (root; :mod:`.rates`)
* auto     ``--scheme auto``'s choice against every scheme measured, on the default job and
           the emulated network (root; :mod:`.auto`)
* recovery a relay, then a user, killed mid-run with ``--on-failure continue`` under Open
           MPI's ULFM: detection and recovery times, loads after the loss; ``--netns``: a
           killed relay under mpirun and on netns-run's links, and a relay's link cut for
           good (:mod:`.recovery`)
* cutend   a relay's link cut a little longer than ``--timeout`` under ``--on-failure
           continue``, the same job N times: how each ends (root, Open MPI; :mod:`.cutend`)
* cpu      K = 40 (Fig. 6 setting): coding phases against the kernel's speed and the CPU
           seconds per role, waiting ranks' old 1 ms sleep cap against the default (:mod:`.cpu`)
* pipeline the Fig. 6 setting (K = 10, 40) with the pipelined coded exchange, ``--segments``
           1, auto and fixed, against uncoded and the predicted saving (root; :mod:`.pipeline`)
"""

from __future__ import annotations

import importlib
import sys

WHAT = ("plan", "coding", "mocha", "runtime", "startup", "network", "schemes", "hgc", "tolerant", "loads",
        "paper", "users", "rates", "auto", "recovery", "cutend", "cpu", "pipeline")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in WHAT:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        sys.stderr.write(f"usage: python -m hmtl_mpi.bench {{{','.join(WHAT)}}} [options]\n"
                         f"hmtl_mpi.bench: error: "
                         f"{'give what to measure' if not argv else 'unknown benchmark ' + repr(argv[0])}"
                         f"; --help lists them\n")
        return 2
    module = importlib.import_module(f"hmtl_mpi.bench.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
