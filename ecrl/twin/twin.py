"""The digital twin: a vectorized simulation of the edge GPU cluster and its inference pods.

Many independent environments step together (numpy arrays shaped [envs, pods]) so that RL
training runs far faster than real time; an experiment uses one environment. Each step of
``dt_s`` seconds: pods progress through their lifecycle (scheduled → starting → ready, OOM
kills, crash back-off), pending configuration changes land, Locust-like users send requests
that kube-proxy spreads over ready pods, every pod serves them (``ecrl.twin.service``), and
the metrics a real cluster exports are updated under their production names.

Deterministic under a seed: one ``numpy.random.Generator`` drives arrivals and start-up times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecrl.histogram import histogram_quantile_rows
from ecrl.twin.profile import Profile
from ecrl.twin.queueing import latency_cdf, mixture_quantile
from ecrl.twin.service import PodStep, pod_step
from ecrl.twin.spec import ClusterSpec

NONE, UNSCHEDULABLE, STARTING, READY, CRASHED = 0, 1, 2, 3, 4
"""Pod phases (UNSCHEDULABLE = Pending with a FailedScheduling event)."""
HOLDING = (STARTING, READY, CRASHED)
"""Phases in which a pod is bound to a node and holds its GPU slot and resource requests."""

DEFAULT_HIST_EDGES_S = np.concatenate([[0.0], np.geomspace(0.001, 120.0, 360)])
"""Latency histogram buckets: log-spaced 1 ms … 120 s, 3.3 % wide (≈2 ms at the seeds' 72 ms)."""
METRICS_WINDOW_S = 15.0
"""Averaging window of pod metrics (metrics-server's default resolution is 15 s)."""
LOADING_CPU_CORES = 1.0
"""CPU a starting Triton pod burns while loading the model (why HPA has a CPU init period)."""
FAST_FAIL_S = 0.002
"""Latency of a request refused because no pod is ready (connection refused)."""
RATE_WINDOW_S = 10.0
"""Averaging window of the arrival rate fed to the stationary waiting-time formulas."""
CLOSED_LOOP_GAIN = 0.3
"""Share of the latency change that closed-loop users react to within one step."""
MAX_BACKOFF_S = 300.0
"""Kubelet CrashLoopBackOff cap (5 min)."""


@dataclass
class StepResult:
    """What happened in every environment during one step (arrays shaped [envs])."""

    time_s: np.ndarray
    users: np.ndarray
    arrivals: np.ndarray
    served: np.ndarray
    failed: np.ndarray
    queued: np.ndarray
    latency_avg_s: np.ndarray
    latency_p95_s: np.ndarray
    latency_p99_s: np.ndarray
    hist: np.ndarray | None
    pods: PodStep


PlacementScorer = Callable[["Twin", np.ndarray, np.ndarray], np.ndarray]
"""Scores GPUs for pods being scheduled: (twin, env rows, feasible [rows, gpus]) → [rows, gpus].

The default (None) is a LeastAllocated-like spread over free slots and CPU; a learned scorer
plugs in here the way the scheduler extender's ``/prioritize`` does on a cluster.
"""


class Twin:
    """A vectorized digital twin of one cluster scenario (see module docstring)."""

    def __init__(
        self,
        cluster: ClusterSpec,
        profile: Profile,
        n_envs: int = 1,
        seed: int = 0,
        dt_s: float = 1.0,
        record_histograms: bool = False,
        hist_edges_s: np.ndarray = DEFAULT_HIST_EDGES_S,
        placement: PlacementScorer | None = None,
    ) -> None:
        self.cluster = cluster
        self.placement = placement
        self.profile = profile
        self.n_envs = n_envs
        self.dt_s = dt_s
        self.record_histograms = record_histograms
        self.hist_edges_s = hist_edges_s
        self.n_pods = cluster.deployment.max_replicas
        gpus = [(i, g) for i, n in enumerate(cluster.nodes) for g in n.gpus]
        self.gpu_node = np.array([i for i, _ in gpus])
        self.gpu_slots = np.array([g.slots for _, g in gpus], dtype=float)
        self.gpu_speed = np.array([g.speed for _, g in gpus])
        self.gpu_vram = np.array(
            [g.vram_bytes or profile.gpu.vram_bytes for _, g in gpus], dtype=float
        )
        self.node_cpu = np.array([n.cpu_cores for n in cluster.nodes])
        self.node_cpu[0] -= cluster.system_reserved_cpu_cores
        self.node_mem = np.array([n.memory_bytes for n in cluster.nodes], dtype=float)
        self.env_speed = np.ones(n_envs)
        """Per-env GPU speed multiplier (domain randomization; 1 = the profile's card)."""
        self.env_background = np.full(n_envs, profile.gpu.background_util_ratio)
        """Per-env share of the GPU taken by other users (domain randomization)."""
        self.reset(seed)

    # ------------------------------------------------------------------ state
    def reset(self, seed: int | None = None) -> None:
        """Back to t=0 with the Deployment's initial settings; reseeds if ``seed`` is given."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        e, p, g = self.n_envs, self.n_pods, len(self.gpu_node)
        d = self.cluster.deployment
        self.t = 0.0
        self.phase = np.zeros((e, p), dtype=np.int8)
        self.pod_gpu = np.full((e, p), -1)
        self.t_event = np.full((e, p), np.inf)
        self.created_s = np.zeros((e, p))
        self.ready_s = np.full((e, p), np.nan)
        self.restarts = np.zeros((e, p))
        self.queue = np.zeros((e, p))
        self.cpu_ema = np.zeros((e, p))
        self.qtime_ema = np.zeros((e, p))
        self.conc_ema = np.zeros((e, p))
        self.rate_ema = np.zeros((e, p))
        self.arrival_ema = np.zeros((e, p))
        self.metrics_age = np.zeros((e, p))
        self.mem_used = np.zeros((e, p))
        # Triton-style cumulative counters per pod (reset when a pod is recreated).
        self.c_success = np.zeros((e, p))
        self.c_failure = np.zeros((e, p))
        self.c_queue_us = np.zeros((e, p))
        self.c_compute_us = np.zeros((e, p))
        self.c_exec = np.zeros((e, p))
        self.gpu_busy = np.zeros((e, g))
        self._last_pod_busy = np.zeros((e, p))
        self.gpu_util = np.broadcast_to(self.env_background[:, None], (e, g)).copy()
        self.gpu_temp = np.full((e, g), self.profile.gpu.temp_idle_c)
        self.desired = np.full(e, float(d.initial_replicas))
        self.max_batch = np.full(e, float(d.max_batch_size))
        self.delay_s = np.full(e, d.batch_delay_s)
        self.instances = np.full(e, float(d.instance_count))
        self.cpu_req = np.full(e, d.cpu_request_cores)
        self.mem_req = np.full(e, float(d.memory_request_bytes))
        self.pend_batch = self.max_batch.copy()
        self.pend_delay = self.delay_s.copy()
        self.pend_inst = self.instances.copy()
        self.pend_at = np.full(e, np.inf)
        self.changed_at_s = np.zeros(e)
        self.last_latency_s = np.full(e, self.profile.server.client_overhead_s)
        self.totals = {
            k: np.zeros(e) for k in ("arrived", "served", "failed", "oom_kills", "rejected")
        }
        self.window_p95 = np.full((e, int(METRICS_WINDOW_S / self.dt_s) or 1), np.nan)
        self.window_served = np.zeros_like(self.window_p95)
        self.window_failed = np.zeros_like(self.window_p95)
        self._reconcile()
        # Pods present at t=0 start Ready (the run begins from a warmed-up Deployment).
        start = self.phase == STARTING
        self.phase[start] = READY
        self.ready_s[start] = 0.0
        self.t_event[start] = np.inf

    # --------------------------------------------------------------- actions
    def set_targets(
        self,
        replicas: np.ndarray | None = None,
        max_batch: np.ndarray | None = None,
        delay_s: np.ndarray | None = None,
        instances: np.ndarray | None = None,
        cpu_cores: np.ndarray | None = None,
        memory_bytes: np.ndarray | None = None,
    ) -> None:
        """Apply absolute targets per env (NaN = unchanged), as the Kubernetes/Triton APIs would.

        Replicas go through the scale subresource (ReplicaSet reconciles at once); batching and
        instances through Triton's load-with-config (live after ``reload_s``, refused if the new
        config would not fit in VRAM — Triton keeps the old model); CPU/memory through in-place
        resize (refused when the node cannot fit it).
        """
        d = self.cluster.deployment
        before = self._settings()
        if replicas is not None:
            r = np.asarray(replicas, dtype=float)
            self.desired = np.where(
                np.isnan(r), self.desired, np.clip(r, d.min_replicas, d.max_replicas)
            )
        if max_batch is not None or delay_s is not None or instances is not None:
            nb = self._merge(max_batch, self.max_batch)
            nd = self._merge(delay_s, self.delay_s)
            ni = self._merge(instances, self.instances)
            changed = (nb != self.max_batch) | (nd != self.delay_s) | (ni != self.instances)
            fits = self._vram_fits(ni, nb)
            self.totals["rejected"] += changed & ~fits
            ok = changed & fits
            self.pend_batch = np.where(ok, nb, self.pend_batch)
            self.pend_delay = np.where(ok, nd, self.pend_delay)
            self.pend_inst = np.where(ok, ni, self.pend_inst)
            self.pend_at = np.where(ok, self.t + self.profile.server.reload_s, self.pend_at)
        if cpu_cores is not None or memory_bytes is not None:
            nc = self._merge(cpu_cores, self.cpu_req)
            nm = self._merge(memory_bytes, self.mem_req)
            fits = self._node_fits(nc, nm)
            changed = (nc != self.cpu_req) | (nm != self.mem_req)
            self.totals["rejected"] += changed & ~fits
            self.cpu_req = np.where(fits, nc, self.cpu_req)
            self.mem_req = np.where(fits, nm, self.mem_req)
        changed = (self._settings() != before).any(axis=0)
        self.changed_at_s = np.where(changed, self.t, self.changed_at_s)
        self._reconcile()

    def _settings(self) -> np.ndarray:
        """Every setting a policy can change, stacked ([settings, envs]; pending ones included)."""
        return np.stack(
            [
                self.desired,
                self.pend_batch,
                self.pend_delay,
                self.pend_inst,
                self.cpu_req,
                self.mem_req,
            ]
        )

    def vary(self, speed_scale: np.ndarray, background_util_ratio: np.ndarray) -> None:
        """Per-env GPU speed and background load (domain randomization for RL training)."""
        self.env_speed = np.broadcast_to(
            np.asarray(speed_scale, dtype=float), (self.n_envs,)
        ).copy()
        self.env_background = np.broadcast_to(
            np.asarray(background_util_ratio, dtype=float), (self.n_envs,)
        ).copy()
        self.gpu_util = np.maximum(self.gpu_util, self.env_background[:, None])

    @staticmethod
    def _merge(new: np.ndarray | None, old: np.ndarray) -> np.ndarray:
        if new is None:
            return old
        v = np.broadcast_to(np.asarray(new, dtype=float), old.shape)
        return np.where(np.isnan(v), old, v)

    def holding(self) -> np.ndarray:
        """Pods bound to a node, holding a GPU slot and their requests ([envs, pods])."""
        return (self.phase == STARTING) | (self.phase == READY) | (self.phase == CRASHED)

    def pods_per_gpu(self, mask: np.ndarray) -> np.ndarray:
        """Pods selected by ``mask`` ([envs, pods]) on each GPU: [envs, gpus]."""
        onehot = self.pod_gpu[..., None] == np.arange(len(self.gpu_node))
        return (onehot & mask[..., None]).sum(axis=1).astype(float)

    def pods_per_node(self, per_gpu: np.ndarray) -> np.ndarray:
        """Sum per-GPU pod counts ([..., gpus]) over each node's GPUs: [..., nodes]."""
        return per_gpu @ np.eye(len(self.node_cpu))[self.gpu_node]

    def _vram_fits(self, instances: np.ndarray, max_batch: np.ndarray) -> np.ndarray:
        per = self.profile.vram_per_replica_bytes(instances, max_batch)
        used = self.pods_per_gpu(self.holding()) * per[:, None]
        return (used <= self.gpu_vram).all(axis=1)

    def _node_fits(self, cpu: np.ndarray, mem: np.ndarray) -> np.ndarray:
        per_node = self.pods_per_node(self.pods_per_gpu(self.holding()))
        return (
            (per_node * cpu[:, None] <= self.node_cpu + 1e-9)
            & (per_node * mem[:, None] <= self.node_mem)
        ).all(axis=1)

    # ------------------------------------------------------------ lifecycle
    def _reconcile(self) -> None:
        """ReplicaSet controller + default scheduler: create/delete pods to match ``desired``."""
        existing = (self.phase != NONE).sum(axis=1)
        excess = existing - self.desired
        if (excess > 0).any():
            self._delete(np.maximum(excess, 0))
        for _ in range(self.n_pods):
            existing = (self.phase != NONE).sum(axis=1)
            need = existing < self.desired
            if not need.any():
                break
            slot = np.argmax(self.phase == NONE, axis=1)
            rows = np.flatnonzero(need)
            cols = slot[rows]
            self.phase[rows, cols] = UNSCHEDULABLE
            self.created_s[rows, cols] = self.t
            self.restarts[rows, cols] = 0
            for arr in (
                self.c_success,
                self.c_failure,
                self.c_queue_us,
                self.c_compute_us,
                self.c_exec,
            ):
                arr[rows, cols] = 0.0
            self._schedule_one(rows, cols)
        # Retry placement of Pending pods (the scheduler's backoff queue, collapsed to one step).
        rows, cols = np.nonzero(self.phase == UNSCHEDULABLE)
        for r, c in zip(rows, cols, strict=True):
            self._schedule_one(np.array([r]), np.array([c]))

    def _schedule_one(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Bind pods to the feasible GPU with most free slots (LeastAllocated-like spread)."""
        per_gpu = self.pods_per_gpu(self.holding())[rows]
        free = self.gpu_slots - per_gpu
        per_node = self.pods_per_node(per_gpu)
        cpu_free = self.node_cpu - per_node * self.cpu_req[rows, None]
        mem_free = self.node_mem - per_node * self.mem_req[rows, None]
        fits = (
            (free > 0)
            & (cpu_free[:, self.gpu_node] >= self.cpu_req[rows, None] - 1e-9)
            & (mem_free[:, self.gpu_node] >= self.mem_req[rows, None])
        )
        if self.placement is not None:
            score = np.where(fits, self.placement(self, rows, fits), -np.inf)
        else:
            score = np.where(
                fits,
                free / self.gpu_slots + cpu_free[:, self.gpu_node] / self.node_cpu[self.gpu_node],
                -1,
            )
        best = np.argmax(score, axis=1)
        ok = fits[np.arange(len(rows)), best]
        r, c = rows[ok], cols[ok]
        self.phase[r, c] = STARTING
        self.pod_gpu[r, c] = best[ok]
        self.t_event[r, c] = self.t + self._startup_s(len(r))
        self.metrics_age[r, c] = 0.0

    def _startup_s(self, n: int) -> np.ndarray:
        s = self.profile.server
        if s.startup_cv <= 0:
            return np.full(n, s.startup_mean_s)
        sigma = np.sqrt(np.log1p(s.startup_cv**2))
        return self.rng.lognormal(np.log(s.startup_mean_s) - sigma**2 / 2, sigma, n)

    def _delete(self, excess: np.ndarray) -> None:
        """Pick scale-down victims like the ReplicaSet controller: unscheduled, unready, newest."""
        key = np.where(self.phase == UNSCHEDULABLE, 4e9, 0.0)
        key = key + np.where((self.phase == STARTING) | (self.phase == CRASHED), 3e9, 0.0)
        key = key + np.where(self.phase == READY, 1e9, 0.0) + self.created_s
        key = np.where(self.phase == NONE, -np.inf, key)
        order = np.argsort(-key, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(
            rank, order, np.arange(self.n_pods)[None, :].repeat(self.n_envs, 0), axis=1
        )
        victim = (rank < excess[:, None]) & (self.phase != NONE)
        # Graceful termination: endpoints are removed first, queued requests go to the others.
        moved = np.where(victim, self.queue, 0.0).sum(axis=1)
        self.queue[victim] = 0.0
        self.phase[victim] = NONE
        self.pod_gpu[victim] = -1
        self.t_event[victim] = np.inf
        self._requeue(moved)

    def _requeue(self, moved: np.ndarray) -> None:
        ready = self.phase == READY
        n_ready = ready.sum(axis=1)
        share = np.where(n_ready > 0, moved / np.maximum(n_ready, 1), 0.0)
        self.queue += np.where(ready, share[:, None], 0.0)
        lost = np.where(n_ready > 0, 0.0, moved)
        self.totals["failed"] += lost

    def _advance_lifecycle(self) -> None:
        d = self.pend_at <= self.t + 1e-9
        self.max_batch = np.where(d, self.pend_batch, self.max_batch)
        self.delay_s = np.where(d, self.pend_delay, self.delay_s)
        self.instances = np.where(d, self.pend_inst, self.instances)
        self.pend_at = np.where(d, np.inf, self.pend_at)
        due = (self.t_event <= self.t + 1e-9) & (self.phase == CRASHED)
        if due.any():
            r, c = np.nonzero(due)
            self.phase[r, c] = STARTING
            self.t_event[r, c] = self.t + self._startup_s(len(r))
        due = (self.t_event <= self.t + 1e-9) & (self.phase == STARTING)
        if due.any():
            per = self.profile.vram_per_replica_bytes(self.instances, self.max_batch)
            ready_per_gpu = self.pods_per_gpu(self.phase == READY)
            r, c = np.nonzero(due)
            for ri, ci in zip(r, c, strict=True):
                g = self.pod_gpu[ri, ci]
                if (ready_per_gpu[ri, g] + 1) * per[ri] <= self.gpu_vram[g]:
                    self.phase[ri, ci] = READY
                    self.ready_s[ri, ci] = self.t
                    self.t_event[ri, ci] = np.inf
                    ready_per_gpu[ri, g] += 1
                else:  # CUDA out of memory at model load → container exits → back-off
                    self._crash(np.array([ri]), np.array([ci]))

    def _crash(self, rows: np.ndarray, cols: np.ndarray) -> None:
        self.restarts[rows, cols] += 1
        back = np.minimum(
            self.profile.server.oom_restart_s * 2 ** (self.restarts[rows, cols] - 1), MAX_BACKOFF_S
        )
        self.phase[rows, cols] = CRASHED
        self.t_event[rows, cols] = self.t + back
        self.ready_s[rows, cols] = np.nan
        lost = np.zeros(self.n_envs)
        np.add.at(lost, rows, self.queue[rows, cols])
        np.add.at(self.c_failure, (rows, cols), self.queue[rows, cols])
        self.queue[rows, cols] = 0.0
        self.totals["failed"] += lost

    # ----------------------------------------------------------------- step
    def step(self, users: np.ndarray | float, rps: np.ndarray | float | None = None) -> StepResult:
        """Advance every environment by ``dt_s`` with ``users`` closed-loop users (or ``rps``)."""
        dt = self.dt_s
        e = self.n_envs
        self._advance_lifecycle()
        self._reconcile()
        users_a = np.broadcast_to(np.asarray(users, dtype=float), (e,))
        ready = self.phase == READY
        n_ready = ready.sum(axis=1)
        if rps is None:
            offered = users_a / (self.cluster.mean_think_s + self.last_latency_s)
        else:
            offered = np.broadcast_to(np.asarray(rps, dtype=float), (e,))
        per_pod = np.where(ready, (offered * dt / np.maximum(n_ready, 1))[:, None], 0.0)
        arrivals = self.rng.poisson(per_pod).astype(float)
        refused = np.where(n_ready == 0, self.rng.poisson(offered * dt).astype(float), 0.0)

        slow = self._gpu_slowdown()
        speed = np.where(self.pod_gpu >= 0, self.gpu_speed[np.maximum(self.pod_gpu, 0)], 1.0)
        speed = speed * self.env_speed[:, None]
        d = self.cluster.deployment
        ps = pod_step(
            self.profile,
            arrivals,
            np.where(ready, self.queue, 0.0),
            self.instances[:, None],
            self.max_batch[:, None],
            self.delay_s[:, None],
            self.cpu_req[:, None],
            slow,
            speed,
            dt,
            d.request_timeout_s,
            d.max_queue_size,
            mean_rate_rps=self.arrival_ema,
        )
        self.arrival_ema += min(1.0, dt / RATE_WINDOW_S) * (arrivals / dt - self.arrival_ema)
        served = np.where(ready, ps.served, 0.0)
        failed_pod = np.where(ready, ps.failed, 0.0)
        self.queue = np.where(ready, ps.queue_end, self.queue)
        self._update_counters(ps, served, failed_pod, ready)
        self._update_gpu(ps, served, ready)
        self._update_memory(ps, served, ready)

        tot_served = served.sum(axis=1)
        tot_failed = failed_pod.sum(axis=1) + refused
        lat_avg = np.where(
            tot_served > 0,
            (served * ps.latency_mean_s).sum(axis=1) / np.maximum(tot_served, 1e-12),
            np.nan,
        )
        fail_lat = np.where(tot_failed > 0, FAST_FAIL_S, 0.0)
        loop_lat = np.where(
            np.isnan(lat_avg), np.where(tot_failed > 0, fail_lat, self.last_latency_s), lat_avg
        )
        # Users react to the latency of their own last request; averaged over users and over a
        # step, the loop responds with a lag. Damping it avoids a limit cycle that real
        # Locust runs do not show (per-user feedback is continuous, not once per second).
        self.last_latency_s = self.last_latency_s + CLOSED_LOOP_GAIN * (
            loop_lat - self.last_latency_s
        )
        p95, p99, hist = self._latency_quantiles(ps, served)
        self.window_p95 = np.roll(self.window_p95, -1, axis=1)
        self.window_served = np.roll(self.window_served, -1, axis=1)
        self.window_failed = np.roll(self.window_failed, -1, axis=1)
        self.window_p95[:, -1] = p95
        self.window_served[:, -1] = tot_served
        self.window_failed[:, -1] = tot_failed
        arrived = arrivals.sum(axis=1) + refused
        self.totals["arrived"] += arrived
        self.totals["served"] += tot_served
        self.totals["failed"] += tot_failed
        self.t += dt
        return StepResult(
            time_s=np.full(e, self.t - dt),
            users=users_a.copy(),
            arrivals=arrived,
            served=tot_served,
            failed=tot_failed,
            queued=self.queue.sum(axis=1),
            latency_avg_s=lat_avg,
            latency_p95_s=p95,
            latency_p99_s=p99,
            hist=hist,
            pods=ps,
        )

    def _gpu_slowdown(self) -> np.ndarray:
        """Stretch of batch execution per pod from time-slicing with the GPU's other contexts.

        A context waits while others hold the GPU: execution stretches by 1/(1 − others' busy
        share) (capped at 95 %), plus a context-switch loss per extra busy context.
        """
        g = np.maximum(self.pod_gpu, 0)
        gpu_total = self.gpu_busy + self.env_background[:, None]
        own = self._last_pod_busy
        others = np.clip(np.take_along_axis(gpu_total, g, axis=1) - own, 0.0, 0.95)
        busy_ctx = self.pods_per_gpu((self.phase == READY) & (own > 0.01))
        k = np.take_along_axis(busy_ctx, g, axis=1)
        switch = 1.0 + self.profile.gpu.timeslice_overhead_ratio * np.maximum(k - 1.0, 0.0)
        return switch / (1.0 - others)

    def _update_gpu(self, ps: PodStep, served: np.ndarray, ready: np.ndarray) -> None:
        busy = np.where(ready, ps.gpu_busy_ratio, 0.0)
        self._last_pod_busy = busy
        onehot = (self.pod_gpu[..., None] == np.arange(len(self.gpu_node))) & ready[..., None]
        self.gpu_busy = (onehot * busy[..., None]).sum(axis=1)
        self.gpu_util = np.minimum(1.0, self.gpu_busy + self.env_background[:, None])
        gp = self.profile.gpu
        target = gp.temp_idle_c + (gp.temp_max_c - gp.temp_idle_c) * self.gpu_util
        self.gpu_temp += (target - self.gpu_temp) * min(1.0, self.dt_s / 60.0)

    def _update_counters(
        self, ps: PodStep, served: np.ndarray, failed: np.ndarray, ready: np.ndarray
    ) -> None:
        self.c_success += served
        self.c_failure += failed
        self.c_queue_us += served * ps.queue_wait_mean_s * 1e6
        self.c_compute_us += served * ps.compute_s * 1e6
        self.c_exec += np.where(ready, ps.exec_count, 0.0)
        a = min(1.0, self.dt_s / METRICS_WINDOW_S)
        starting = self.phase == STARTING
        cpu_now = np.where(ready, ps.cpu_used_cores, np.where(starting, LOADING_CPU_CORES, 0.0))
        cpu_now = np.minimum(cpu_now, self.cpu_req[:, None])
        fresh = self.metrics_age == 0
        self.cpu_ema = np.where(fresh, cpu_now, self.cpu_ema + a * (cpu_now - self.cpu_ema))
        rate = served / self.dt_s
        self.rate_ema = np.where(fresh, rate, self.rate_ema + a * (rate - self.rate_ema))
        qt = np.where(served > 0, ps.queue_wait_mean_s, 0.0)
        self.qtime_ema = np.where(fresh, qt, self.qtime_ema + a * (qt - self.qtime_ema))
        conc = np.where(
            ready,
            self.queue + rate * (ps.latency_mean_s - self.profile.server.client_overhead_s),
            0.0,
        )
        self.conc_ema = np.where(fresh, conc, self.conc_ema + a * (conc - self.conc_ema))
        self.metrics_age = np.where(self.holding(), self.metrics_age + self.dt_s, 0.0)

    def _update_memory(self, ps: PodStep, served: np.ndarray, ready: np.ndarray) -> None:
        s = self.profile.server
        inflight = self.queue + served / self.dt_s * (ps.latency_mean_s - s.client_overhead_s)
        used = s.memory_base_bytes + self.instances[:, None] * s.memory_per_instance_bytes
        self.mem_used = np.where(
            self.holding(), used + np.where(ready, inflight, 0.0) * s.memory_per_inflight_bytes, 0
        )
        oom = ready & (self.mem_used > self.mem_req[:, None])
        if oom.any():
            r, c = np.nonzero(oom)
            self.totals["oom_kills"] += np.bincount(r, minlength=self.n_envs)
            self._crash(r, c)

    def _latency_quantiles(
        self, ps: PodStep, served: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """p95 (and with histograms p99 and the step's histogram) of the requests served."""
        if self.record_histograms:
            x = np.broadcast_to(self.hist_edges_s, (*served.shape, len(self.hist_edges_s)))
            cdf = latency_cdf_edges(ps, x)
            cdf[..., -1] = 1.0  # the last bucket is +Inf
            hist = (np.diff(cdf, axis=-1) * served[..., None]).sum(axis=1)
            p95 = histogram_quantile_rows(hist, self.hist_edges_s, 0.95)
            p99 = histogram_quantile_rows(hist, self.hist_edges_s, 0.99)
            return p95, p99, hist
        tail = ps.jitter_s + ps.wait_mean_s
        lo = np.where(served > 0, ps.base_s, np.inf).min(axis=1)
        hi = np.where(served > 0, ps.base_s + ps.w1_s + ps.w0_s + 25.0 * tail, 0.0).max(axis=1)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        p95 = mixture_quantile(0.95, served, lo, hi, ps.cdf)
        return p95, np.full(self.n_envs, np.nan), None


def latency_cdf_edges(ps: PodStep, x: np.ndarray) -> np.ndarray:
    """Per-pod latency CDF evaluated at histogram edges ``x`` ([envs, pods, buckets+1])."""

    def ex(a: np.ndarray) -> np.ndarray:
        return a[..., None]

    return latency_cdf(
        x,
        ex(ps.base_s),
        ex(ps.w0_s),
        ex(ps.w1_s),
        ex(ps.jitter_s),
        ex(ps.p_wait),
        ex(ps.wait_mean_s),
    )
