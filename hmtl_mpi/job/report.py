"""What rank 0 prints and writes: progress lines, the summary, the JSON report.

Every figure comes from the run: seconds between barriers and bytes counted at
the senders (:mod:`hmtl_mpi.wire.interfaces`), digests compared (:mod:`hmtl_mpi.job.checks`).
The report's keys are documented in README.md, "The report".
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..vocabulary import PHASES

def progress_line(scheme, it, n, record, iv_bytes) -> str:
    s, b = record["seconds"], record["bytes"]
    return (f"[{scheme:>7}] iteration {it + 1}/{n}: total {s['total']:.4f} s "
            + (f"(exchange {s['exchange']:.4f} s, pipelined)  " if s.get("exchange") else
               f"(up {s['relay_to_server']:.4f} s, down {s['server_to_relay']:.4f} s)  ")
            + f"relay->server {b['relay_to_server'] / iv_bytes:.3f} IV, "
            f"server->relay {b['server_to_relay'] / iv_bytes:.3f} IV, "
            f"IVs {'bit-exact' if record['ivs_bit_exact'] else 'MISMATCH'}")


def run_report(scheme, config, learner, K, H, iterations, checks) -> dict:
    """The report of one scheme's run (README, "The report"); ``config`` the job's
    :class:`~hmtl_mpi.job.config.JobConfig`."""
    flat = config.flat
    iv_bytes = 8 * learner.dim
    up, down = scheme.planned_loads
    report = {
        "scheme": scheme.name, "K": K, "H": H, "layout": "flat" if flat else "hierarchical",
        "dataset": config.dataset, "dim": learner.dim,
        "iv_bytes": iv_bytes, "model_bytes": 8 * (learner.model_len - learner.extra_len),
        "model_extra_bytes": 8 * learner.extra_len, "workload": scheme.workload,
        "downlink_method": scheme.downlink_method(config.downlink, flat),
        "iterations": iterations,
        "measured_loads": {        # what reaches the server: from relays, or straight from users
            "uplink": float(np.mean([r["bytes"]["relay_to_server"] + r["bytes"]["user_to_server"]
                                     for r in iterations])) / iv_bytes,
            "downlink": float(np.mean([r["bytes"]["server_to_relay"] for r in iterations])) / iv_bytes,
        },
        "planned_loads": {"uplink": float(up), "downlink": float(down)},
        "median_seconds": {p: float(np.median([r["seconds"][p] for r in iterations])) for p in PHASES},
        # per-iteration IV digests (schemes with steps); a barrier-free run has the
        # gradient digest instead, compared across schemes
        "ivs_bit_exact": (all(r["ivs_bit_exact"] for r in iterations)
                          if iterations and "ivs_bit_exact" in iterations[0] else None),
        "models_delivered_intact": checks["delivered"],
        "model_digest": checks["digest"],
    }
    if iterations and "cpu_seconds" in iterations[0]:   # MPI, schemes with steps (run_steps)
        report["median_cpu_seconds"] = {
            role: {p: float(np.median([r["cpu_seconds"][role][p] for r in iterations]))
                   for p in phases}
            for role, phases in iterations[0]["cpu_seconds"].items()}
    report.update(scheme.report_fields())
    if checks.get("accuracy") is not None:
        report["accuracy"] = checks["accuracy"]
    return report


def job_payload(reports, scheme_arg: str, K: int, H: int) -> dict:
    """The JSON written with --report: one run's report, or every run side by side."""
    if len(reports) == 1:
        return dict(reports[0])
    digests = {r["model_digest"] for r in reports}
    return {"scheme": scheme_arg, "K": K, "H": H, "iv_bytes": reports[0]["iv_bytes"],
            "runs": {r["scheme"]: r for r in reports}, "model_digests_equal": len(digests) == 1}


def overhead_notes(reports) -> list:
    """Why a measured load exceeds the plan, in bytes per iteration (the wire tells the truth)."""
    notes = []
    for r in reports:
        for key, label in (("uplink", "relay->server"), ("downlink", "server->relay")):
            extra = (r["measured_loads"][key] - r["planned_loads"][key]) * r["iv_bytes"]
            if extra >= 0.5:
                notes.append(f"    {r['scheme']} {label}: {extra:.0f} bytes per iteration above the "
                             f"plan ({extra / r['iv_bytes']:.3f} IV of {r['iv_bytes']} bytes)")
    if notes:
        notes.insert(0, "  Above the plan by what the wire carries besides IVs: the broadcast's "
                        "8-byte length per block, padding of IVs\n  to whole units, escaped coded "
                        "symbols (4 bytes each), the models' Sigma/rho after a refresh:")
    return notes


def prediction_lines(reports) -> list:
    """Predicted (before the run, :mod:`hmtl_mpi.job.predict`) against measured, per scheme."""
    timed = [r for r in reports if "predicted_seconds" in r]
    if not timed:
        return []
    lines = ["", "Predicted before the run vs measured, ms per iteration (prediction: eq. 13 + "
                 "latency with the measured links and coding speed; learning not included):"]
    lines.append(f"  {'scheme':10}{'relay<->server':>22}{'coding':>20}{'total':>20}")
    for r in timed:
        p, m = r["predicted_seconds"], r["median_seconds"]
        # the pipelined exchange (one step) holds its coding: counted as relay<->server
        pairs = [(p["relay_to_server"] + p["server_to_relay"],
                  m["relay_to_server"] + m["server_to_relay"] + m.get("exchange", 0.0)),
                 (p["encode"] + p["decode"], m["encode"] + m["decode"]),
                 (p["total"], m["total"])]
        lines.append(f"  {r['scheme']:10}" + "".join(
            f"{1e3 * a:>10.2f} / {1e3 * b:<9.2f}" for a, b in pairs))
    base = timed[0]
    for r in timed[1:]:
        pred = 100 * (1 - r["predicted_seconds"]["total"] / base["predicted_seconds"]["total"])
        meas = 100 * (1 - r["median_seconds"]["total"] / base["median_seconds"]["total"])
        lines.append(f"  {r['scheme']} against {base['scheme']}: predicted {pred:+.0f}% time "
                     f"saved, measured {meas:+.0f}% (the measured total includes the learning)")
    return lines


def summary(reports, oversubscribed: bool, links: str = "") -> str:
    """Loads, median phase times and checks of every run, side by side."""
    names = [r["scheme"] for r in reports]
    w = max(14, max(len(n) for n in names) + 7)          # columns wide enough for any name
    lines = ["", "Loads (IVs per iteration, bytes on the wire / bytes of one IV):"]
    lines.append(f"  {'':18}" + "".join(f"{n + ' meas.':>{w + 2}}{n + ' plan':>{w}}" for n in names))
    for key, label in (("uplink", "to the server"), ("downlink", "server->relay")):
        lines.append(f"  {label:18}" + "".join(
            f"{r['measured_loads'][key]:>{w + 2}.4f}{r['planned_loads'][key]:>{w}.4g}"
            for r in reports))
    lines += overhead_notes(reports)
    lines.append("")
    notes = ([f"links: {links}"] if links else []) + (
        ["more ranks than cores: ranks share CPUs"] if oversubscribed else [])
    lines.append("Median seconds per phase" + (f" ({'; '.join(notes)})" if notes else "") + ":")
    ratios = [f"{n}/{names[0]}" for n in names[1:]]
    rw = max([17] + [len(r) + 2 for r in ratios])
    lines.append(f"  {'phase':18}" + "".join(f"{n:>{w}}" for n in names)
                 + "".join(f"{r:>{rw}}" for r in ratios))
    for p in PHASES:
        vals = [r["median_seconds"][p] for r in reports]
        if not any(vals):                   # a phase no scheme here runs (e.g. exchange)
            continue
        lines.append(f"  {p:18}" + "".join(f"{v:>{w}.6f}" for v in vals)
                     + "".join(f"{v / vals[0]:>{rw}.3f}" if vals[0] > 0 else f"{'':>{rw}}"
                               for v in vals[1:]))
    lines += prediction_lines(reports)
    lines.append("")
    for r in reports:
        acc = r.get("accuracy")
        exact = (f"IVs bit-exact at every holder: {r['ivs_bit_exact']}; "
                 if r.get("ivs_bit_exact") is not None else
                 f"gradient digest {r['gradient_digest'][:16]}...; " if "gradient_digest" in r
                 else "")
        lines.append(f"  {r['scheme']:>7}: {exact}models delivered intact: "
                     f"{r['models_delivered_intact']}; model digest {r['model_digest'][:16]}..."
                     + (f"; mean test error {acc['mean_test_error']:.4f}" if acc else "")
                     + (f"; test accuracy {r['test_accuracy'][-1]:.4f}"
                        if r.get("test_accuracy") else ""))
    acc = reports[0].get("accuracy")
    if acc and "baseline_local_error" in acc:
        lines.append(f"  baselines: independent per-task SVMs {acc['baseline_local_error']:.4f}, "
                     f"one global SVM {acc['baseline_global_error']:.4f} (mean test error)")
    if len(reports) > 1:
        same = len({r["model_digest"] for r in reports}) == 1
        lines.append(f"  final models bit-identical across {', '.join(names)}: {same}")
        if all("gradient_digest" in r for r in reports):
            same = len({r["gradient_digest"] for r in reports}) == 1
            lines.append(f"  decoded gradients bit-identical in every iteration: {same}")
    return "\n".join(lines)


class ReportError(Exception):
    """The report could not be written (a full disk found at the end)."""


def write_report(path, payload) -> None:
    """Write atomically: a failed run never leaves a half-written report, nor a temporary file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"--report {path}: could not be written ({exc.strerror or exc}); "
                          f"no report was left") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
