"""The time-optimal plan (``--plan time``, hmtl_mpi/planning/bandwidth.py) and the rates'
validation: decodable (every IV bit-exact at every relay, through the in-process
exchange), never slower than the load plan under its own model, the load plan itself
when every relay shares the server's link at the same rate, and clear exit-2 errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hmtl_mpi.cli import parse_job_args
from hmtl_mpi.job.predict import phase_seconds
from hmtl_mpi.job.verify import verify_exchange
from hmtl_mpi.planning import bandwidth as bw
from hmtl_mpi.planning.joint import subset_bounds, satisfies_t2
from hmtl_mpi.planning.topology import heterogeneous, paper_fig2, random_regular
from hmtl_mpi.plan import main as plan_main
from hmtl_mpi.schemes import get

REPO = Path(__file__).resolve().parents[1]


def topologies():
    yield "paper-fig2", paper_fig2()
    yield "random K=12 H=4 r=2", random_regular(12, 4, 2, seed=3)
    yield "heterogeneous K=16 d=0.125", heterogeneous(16, 2, 0.125, seed=0)


def rate_sets(H, rng):
    slow = [1e6] * H
    slow[H - 1] = 1e5
    yield slow
    yield list(rng.uniform(1e5, 1e7, size=H))


def covered(planned) -> bool:
    """Every user of every round carried in full by its relays (the coded decodability)."""
    G = planned.G
    for r in planned.rounds:
        for k in r.users:
            if sum((r.alpha[i] for i in np.flatnonzero(G[:, k])), Fraction(0)) < 1:
                return False
    return True


@pytest.mark.parametrize("scheme", ["coded", "joint"])
def test_time_plan_decodes_and_is_no_slower(scheme):
    rng = np.random.default_rng(0)
    for label, G in topologies():
        for rates in rate_sets(G.shape[0], rng):
            s = get(scheme).plan(G, plan="time", relay_rates=rates)
            tp = s.timed
            assert tp is not None and s.planned is tp.planned
            # the same decodability conditions as the load plan, checked exactly
            if scheme == "coded":
                assert covered(tp.planned), label
                assert max(r.D for r in tp.planned.rounds) <= bw.MAX_UNITS
            else:
                b = subset_bounds(G, tp.planned.users)
                assert satisfies_t2(tp.planned.loads, b), label
                assert tp.planned.F <= bw.MAX_UNITS
            # the code meets the plan's loads and decodes: every IV bit-exact everywhere
            up, down = s.planned_loads
            assert up == tp.planned.uplink_load and down == tp.planned.downlink_load
            v = verify_exchange(s, dim=301, seed=1)
            assert v["bit_exact"], (label, rates)
            # never slower than the load plan, and within TIME_RTOL of the LP's optimum
            t_time, t_load = tp.seconds(1.0), tp.seconds(1.0, tp.load_plan)
            assert t_time <= t_load * (1 + 1e-12)
            assert t_time <= tp.lp_seconds_per_byte * (1 + bw.TIME_RTOL) + 1e-15 \
                or tp.source == "load-plan"


def test_one_slow_relay_moves_its_load_to_the_others():
    G = paper_fig2()
    rates = [2.5e6, 2.5e5, 2.5e6, 2.5e6, 2.5e6]       # relay 2 at a tenth
    for scheme, at_most in (("coded", 0.2), ("joint", 0.2)):
        tp = bw.time_plan(scheme, G, rates)
        loads, before = tp.relay_loads, tp.load_relay_loads
        assert loads[1] < before[1] / 4
        assert tp.seconds(1.0) <= at_most * tp.seconds(1.0, tp.load_plan)


@pytest.mark.parametrize("scheme", ["coded", "joint"])
def test_equal_rates_on_a_shared_server_link_give_the_load_plan(scheme):
    """The papers' setting: every relay at the same rate through the server's one link."""
    for label, G in topologies():
        H = G.shape[0]
        for rate in (1e5, 3.3e7):
            tp = bw.time_plan(scheme, G, [rate] * H, server_rate=rate)
            assert tp.source == "load-plan", label
            assert tp.planned is tp.load_plan
            assert tp.relay_loads == tp.load_relay_loads
            s_time = get(scheme).plan(G, plan="time", relay_rates=[rate] * H, server_rate=rate)
            s_load = get(scheme).plan(G)
            assert np.array_equal(s_time.to_buffer(), s_load.to_buffer()), label


def test_equal_rates_without_a_shared_link_balance_the_relays():
    """Equal own links, no shared bottleneck: the slowest relay sets the time, and the
    paper's plan (relays 2, 4, 5 at 2 IVs, relay 3 at 1) is not the fastest."""
    tp = bw.time_plan("coded", paper_fig2(), [1e6] * 5)
    assert max(tp.relay_loads) < max(tp.load_relay_loads)
    assert tp.seconds(1.0) < tp.seconds(1.0, tp.load_plan)


def test_prediction_uses_every_relays_rate():
    G = paper_fig2()
    s = get("coded").plan(G)
    loads = s.link_loads()
    links = {"w1": (0.0, 1e9), "w2": (0.0, 1e6),
             "relays": [(0.0, 1e6)] * 4 + [(0.0, 1e5)], "server": 1e9}
    p = phase_seconds(loads, 1000, links, {}, 1e9)
    per = loads["per_relay_up"]
    expected = max(x * 1000 / r for x, (_, r) in zip(per, links["relays"]))
    assert math.isclose(p["relay_to_server"] - loads["uplink_rounds"] * 0.0, expected)
    assert math.isclose(sum(per), float(s.planned_loads[0]))


# --- rates and options: exit 2 naming the option and value ------------------------------------

@pytest.mark.parametrize("text,count,needle", [
    ("20mbit,2mbit", 5, "2 rate(s) given, but the topology has 5 relays"),
    ("20mbit,,2mbit", None, "an empty rate"),
    ("20mbit,2xbit", None, "'2xbit' is not a rate"),
    ("20mbit,0", None, "'0' must be a rate above 0"),
    ("-3", None, "'-3' is not a rate"),
])
def test_parse_rates_errors(text, count, needle):
    with pytest.raises(bw.RateError) as exc:
        bw.parse_rates(text, count, "--relay-rates")
    assert needle in str(exc.value) and "--relay-rates" in str(exc.value)


def test_parse_rates_units():
    assert bw.parse_rates("8bit,1kbit,2.5mbps,1000,1kibit") == (1.0, 125.0, 2.5e6, 1000.0, 128.0)


@pytest.mark.parametrize("argv,needle", [
    (["--plan", "time"], "--plan time needs --relay-rates"),
    (["--relay-rates", "1mbit,2mbit"], "2 rate(s) given, but the topology has 5 relays"),
    (["--relay-rates", "1mbit,2mbit,3,4,0mbit"], "'0mbit' must be a rate above 0"),
    (["--relay-rates", "1mbit,2mbit,3,4,x"], "'x' is not a rate"),
    (["--server-rate", "1mbit"], "--server-rate goes with --relay-rates"),
    (["--scheme", "uncoded", "--relay-rates", "1,1,1,1,1"], "the uncoded scheme has no plan"),
])
def test_plan_cli_rate_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        plan_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_plan_cli_json_shows_both_plans():
    res = subprocess.run([sys.executable, "-m", "hmtl_mpi.plan", "--scheme", "joint",
                          "--relay-rates", "20mbit,2mbit,20mbit,20mbit,20mbit", "--plan", "time",
                          "--json", "--verify", "--dim", "100"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["plan"] == "time" and d["verify"]["bit_exact"]
    both = d["plans"]
    assert both["time"]["per_relay_uplink_exact"] == d["per_relay_uplink_exact"]
    assert both["load"]["per_relay_uplink"] == [2.0, 2.0, 0.0, 1.0, 2.0]
    assert both["time"]["uplink_seconds_per_iv_byte"] < 0.2 * both["load"]["uplink_seconds_per_iv_byte"]
    assert both["rates_bytes_per_s"][1] == 2.5e5


@pytest.mark.parametrize("argv,needle", [
    (["--plan", "time", "--scheme", "uncoded"], "none of the schemes uncoded has a load plan"),
    (["--plan", "time", "--transport", "inprocess"], "it needs --transport mpi"),
    (["--plan", "time", "--checkpoint", "ck"], "does not go with --checkpoint or --resume"),
    (["--plan", "fast"], "invalid choice: 'fast'"),
    (["--plan", "time", "--relay-stragglers", "1"], "does not go with --relay-stragglers"),
    (["--plan", "time", "--scheme", "auto"], "does not go with --scheme auto"),
])
def test_job_cli_plan_time_errors(argv, needle, capsys):
    config, code = parse_job_args(argv, 0, 16)
    assert config is None and code == 2
    assert needle in capsys.readouterr().err
