"""Write a sweep's fitted parameters as a twin profile (the ``ecrl.twin.profile`` format).

Every figure says where it comes from: *fitted* from the sweep (``ecrl.calibrate.fit`` says
how), or *carried over* from a base profile for what a load sweep cannot see (model size,
memory, VRAM, power, start-up). The header records the provenance: the server's URL, the
date, whether it was emulated (and what said so), and the grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from ecrl.calibrate.fit import FittedParams
from ecrl.calibrate.sweep import SweepResult
from ecrl.twin.profile import Profile, load_profile

_TEMPLATE = """\
# Triton profile: fitted by `ecrl calibrate triton` (ecrl.calibrate) from a live sweep.
# provenance:
#   url: {url}  (inference over {protocol}{grpc})
#   metrics: {metrics}
#   date: {date}
#   server: {server}
#   emulated: {emulated}  ({emulated_source})
#   grid: max_batch_size {batches} x instances {instances} x concurrency {concurrency};
#     max_queue_delay_us {delay}; {duration:g} s per point after {warmup:g} s warm-up;
#     batch-time probe {probe}; CPU limit {cpu:g} cores (twin prediction)
#   sweep: {n_ok}/{n_points} points measured in {wall:.0f} s
# "fitted" = least squares over the sweep (see ecrl/calibrate/fit.py);
# "carried over" = from the base profile {base_q}, not measurable by a load sweep.
name: {name_q}
description: {description_q}
model:  # carried over from {base_q}
  name: {base.model.name}
  params_m: {base.model.params_m}
  gmacs: {base.model.gmacs}
  input_shape: {input_shape}
gpu:
  name: {gpu_name_q}  # carried over (Triton's metrics do not name the card)
  vram_bytes: {base.gpu.vram_bytes}  # carried over
  power_idle_w: {base.gpu.power_idle_w}  # carried over
  power_max_w: {base.gpu.power_max_w}  # carried over
  temp_idle_c: {base.gpu.temp_idle_c}  # carried over
  temp_max_c: {base.gpu.temp_max_c}  # carried over
  # fitted as 0: the measured compute times already include whatever else used the GPU
  background_util_ratio: 0.0
  timeslice_overhead_ratio: {base.gpu.timeslice_overhead_ratio}  # carried over (one pod swept)
compute:
  # fitted: exec(b) = {a_ms:.4f} ms + {k_ms:.4f} ms x b, non-negative least squares over
  # {exec_n} {exec_what} (rmse {rmse_ms:.3f} ms); linear above the largest size
  batch_sizes: {sizes}
  exec_s: [{exec_s}]
server:
  # fitted: client mean latency - Triton request duration, {quiet} uncontended points
  client_overhead_s: {f.client_overhead_s:.6f}
  # fitted: Triton request duration - queue - compute, {quiet} uncontended points
  cpu_s_per_request: {f.cpu_s_per_request:.6f}
  cpu_idle_cores: {base.server.cpu_idle_cores}  # carried over
  host_s_per_batch: {f.host_s_per_batch:.6f}  # fitted: compute input + output per request
  service_cv: {f.service_cv:.4f}  # fitted: (p95 - mean) / mean at the uncontended points
  memory_base_bytes: {base.server.memory_base_bytes}  # carried over
  memory_per_instance_bytes: {base.server.memory_per_instance_bytes}  # carried over
  memory_per_inflight_bytes: {base.server.memory_per_inflight_bytes}  # carried over
  vram_context_bytes: {base.server.vram_context_bytes}  # carried over
  vram_per_instance_bytes: {base.server.vram_per_instance_bytes}  # carried over
  vram_per_batch_item_bytes: {base.server.vram_per_batch_item_bytes}  # carried over
  startup_mean_s: {base.server.startup_mean_s}  # carried over
  startup_cv: {base.server.startup_cv}  # carried over
  reload_s: {reload_s}  # {reload_how}
  oom_restart_s: {base.server.oom_restart_s}  # carried over
"""


def profile_yaml(result: SweepResult, fitted: FittedParams, base: Profile, name: str) -> str:
    """Profile YAML text for a sweep's fit; ``base`` supplies what the sweep cannot see."""
    cfg, prov = result.config, result.provenance
    sizes, exec_s = fitted.exec_table(max(cfg.batch_sizes))
    exec_s = tuple(max(t, 1e-6) for t in exec_s)  # the loader needs > 0
    kind = "emulated" if prov.emulated else "live"
    description = (
        f"{cfg.model} on {prov.server_name} {prov.server_version} at {prov.url} "
        f"({kind}; fitted {prov.date[:10]} by ecrl calibrate triton)"
    )
    measured = sum(p.measured for p in result.points)
    if fitted.reload_s is not None:
        reload_s = f"{fitted.reload_s:.3f}"
        n_loads = len(result.reload_s)
        reload_how = f"fitted: median wall time of {n_loads} load-with-config calls"
    else:
        reload_s, reload_how = str(base.server.reload_s), "carried over (no load succeeded)"
    return _TEMPLATE.format(
        url=prov.url,
        protocol=prov.protocol,
        grpc=f" at {prov.grpc_url}" if prov.grpc_url else "",
        metrics=", ".join(prov.metrics_urls),
        date=prov.date,
        server=f"{prov.server_name} {prov.server_version}",
        emulated=str(prov.emulated).lower(),
        emulated_source=prov.emulated_source,
        batches=list(cfg.batch_sizes),
        instances=list(cfg.instances),
        concurrency=list(cfg.concurrency),
        delay=cfg.max_queue_delay_us,
        duration=cfg.duration_s,
        warmup=cfg.warmup_s,
        probe=f"{cfg.probe_requests} requests per size" if cfg.probe_requests else "off",
        cpu=cfg.cpu_limit_cores,
        n_ok=measured,
        n_points=len(result.points),
        wall=result.wall_s,
        base_q=json.dumps(base.name),
        name_q=json.dumps(name),
        description_q=json.dumps(description),
        base=base,
        input_shape=list(base.model.input_shape),
        gpu_name_q=json.dumps(base.gpu.name),
        a_ms=fitted.exec_intercept_s * 1e3,
        k_ms=fitted.exec_slope_s * 1e3,
        exec_n=fitted.exec_points,
        exec_what=(
            "probe points (exact batch sizes)"
            if fitted.exec_source == "probe"
            else "sweep points (mean batch formed)"
        ),
        rmse_ms=fitted.exec_rmse_s * 1e3,
        sizes=list(sizes),
        exec_s=", ".join(f"{t:.6f}" for t in exec_s),
        f=fitted,
        quiet=fitted.uncontended_points,
        reload_s=reload_s,
        reload_how=reload_how,
    )


def write_profile(
    result: SweepResult, fitted: FittedParams, base: Profile, out: str | Path, name: str
) -> Profile:
    """Write the profile, then load it back with the twin's loader (a bad figure raises)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile_yaml(result, fitted, base, name))
    return load_profile(str(path))
