"""Request-level replay in virtual time: a trace through routing, replicas and a policy.

Pure, deterministic for a seed. What happens, and which live component it stands for:

    arrival ──► handle: power of two choices over running replicas with ongoing < max_ongoing_requests
      │           (Serve's request router); none free: FIFO queue at the handle (shed past
      │           max_queued_requests, timed out past request_timeout_s while queued)
      ▼
    replica = BatchModel (serve_app.engines.batching, the live `engine: sim`'s scheduler) stepped
      │        by this event queue: a run of k equal steps is one event, cut short when an arrival
      │        could join the batch at the next step boundary
      ▼
    every metrics_push_interval_s: fleet load sampled (handle queue, engine waiting/running,
      │        waiting tokens, KV usage); the policy sees the mean over metrics_look_back_s
      ▼
    every policy tick: policy(Observation) -> target; new replicas serve after a cold start,
             removed ones (starting first, then the least loaded) drain for up to
             graceful_shutdown_timeout_s; replicas holding GPUs (starting, running, draining)
             are integrated into replica-seconds.

Event times go through one heap; arrivals are merged from the sorted trace, not pushed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque

from serve_app.autoscaling._replay_types import ReplayPolicy, ReplayResult, ReplaySetup
from serve_app.autoscaling.latency import LatencyModel
from serve_app.autoscaling.policy import Observation
from serve_app.autoscaling.traces import RequestTrace
from serve_app.engines.batching import BatchModel, Seq

__all__ = ["ReplayPolicy", "ReplaySetup", "ReplayResult", "run_replay"]

_NAN = float("nan")


class _Replica:
    __slots__ = ("model", "ongoing", "ready_at", "draining", "stopped", "version", "in_step", "t0", "d1", "steady",
                 "k", "deadline")

    def __init__(self, latency: LatencyModel, ready_at: float):
        self.model = BatchModel(latency)
        self.ongoing = 0
        self.ready_at = ready_at
        self.draining = self.stopped = self.in_step = False
        self.version = 0
        self.t0 = self.d1 = self.steady = 0.0
        self.k = 0
        self.deadline = math.inf


_RUN_END, _READY, _DEADLINE, _PUSH, _TICK = range(5)


def run_replay(trace: RequestTrace, policy: ReplayPolicy, setup: ReplaySetup) -> ReplayResult:
    """Replay `trace` against `policy` on replicas timed by `setup.latency`; see the module docstring."""
    sim = _Sim(trace, policy, setup)
    sim.run()
    return sim.result()


class _Sim:
    def __init__(self, trace: RequestTrace, policy: ReplayPolicy, setup: ReplaySetup):
        self.trace, self.policy, self.setup, self.cfg = trace, policy, setup, policy.config
        self.lat = setup.latency
        self.rng = random.Random(setup.seed)
        n = len(trace)
        self.first = [_NAN] * n
        self.done = [_NAN] * n
        self.status = bytearray(n)  # 0 pending, 1 finished, 2 shed, 3 timed out, 4 killed
        self.heap: list[tuple[float, int, int, object, int]] = []
        self.seq = 0
        self.queue: deque[int] = deque()  # request indexes waiting at the handle
        self.running: list[_Replica] = []
        self.starting: list[_Replica] = []
        self.draining: list[_Replica] = []
        self.target = self.cfg.start_replicas
        self.held_since, self.replica_s, self.held = 0.0, 0.0, 0
        self.samples: deque[tuple[float, float, float, float, float, float]] = deque()
        self.load = (0.0, 0.0, 0.0, 0.0, None)
        self.timeline: list[tuple[float, int, int, int, int, int, int]] = []
        self.scale_events = self.flaps = 0
        self.last_dir = 0
        self.peak_queue = 0.0
        self.now = 0.0
        for _ in range(self.target):
            r = _Replica(self.lat, 0.0)
            self.running.append(r)
        self._held(0.0, self.target)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, obj: object = None, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, version))

    def _held(self, now: float, delta: int) -> None:
        self.replica_s += self.held * (now - self.held_since)
        self.held_since, self.held = now, self.held + delta

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        arrivals, prompts, outputs = self.trace.arrival_s, self.trace.prompt_tokens, self.trace.output_tokens
        n = len(arrivals)
        cfg = self.cfg
        ing = self.setup.ingress_s
        end_arrivals = (arrivals[-1] if n else 0.0) + ing
        self.horizon = end_arrivals + self.setup.tail_s
        self._push(0.0, _PUSH)
        self._push(0.0, _TICK)
        heap, pop = self.heap, heapq.heappop
        i = 0
        limit = self.horizon + 3600.0  # a fleet that never serves again stops the replay here
        while True:
            t_arr = arrivals[i] + ing if i < n else math.inf
            if heap and heap[0][0] <= t_arr:
                t, _, kind, obj, version = pop(heap)
                if t > limit:
                    break
                self.now = t
                if kind == _RUN_END:
                    if obj.version == version:  # type: ignore[union-attr]
                        self._run_end(obj, t)  # type: ignore[arg-type]
                elif kind == _PUSH:
                    self._sample(t)
                    if i < n or self.busy() or t < self.horizon:
                        self._push(t + cfg.metrics_push_interval_s, _PUSH)
                elif kind == _TICK:
                    self._tick(t)
                    if i < n or self.busy() or t < self.horizon:
                        self._push(t + self.policy.tick_s, _TICK)
                elif kind == _READY:
                    self._ready(obj, t)  # type: ignore[arg-type]
                elif kind == _DEADLINE:
                    self._kill(obj, t)  # type: ignore[arg-type]
            elif i < n:
                self.now = t_arr
                self._arrive(i, t_arr, prompts[i], outputs[i])
                i += 1
            else:
                break
        self.end = self.now

    def busy(self) -> bool:
        return bool(self.queue) or any(r.ongoing for r in self.running) or bool(self.draining)

    # -- requests --------------------------------------------------------------------------------
    def _arrive(self, i: int, t: float, prompt: int, output: int) -> None:
        r = self._route()
        if r is None:
            mq = self.setup.max_queued_requests
            if mq is not None and len(self.queue) >= mq:
                self.status[i] = 2
                return
            self.queue.append(i)
            return
        self._submit(r, i, t, prompt, output)

    def _route(self) -> _Replica | None:
        running = self.running
        m = self.setup.max_ongoing_requests
        if not running:
            return None
        if len(running) == 1:
            r = running[0]
            return r if r.ongoing < m else None
        rnd = self.rng.random
        a = running[int(rnd() * len(running))]
        b = running[int(rnd() * len(running))]
        best = a if a.ongoing <= b.ongoing else b
        if best.ongoing < m:
            return best
        best = min(running, key=lambda r: r.ongoing)  # Serve retries other replicas before queueing
        return best if best.ongoing < m else None

    def _submit(self, r: _Replica, i: int, t: float, prompt: int, output: int) -> None:
        model = r.model
        model.submit(Seq(prompt, output, self.trace.arrival_s[i], i))
        r.ongoing += 1
        if not r.in_step:
            self._start_run(r, t)
        elif r.k > 1 and model.can_admit():
            # Join at the next step boundary: end the run there instead.
            into = t - r.t0 - r.d1
            j = 1 if into <= 0 else 1 + math.ceil(into / r.steady - 1e-12)
            if j < r.k:
                r.k = j
                r.version += 1
                self._push(r.t0 + r.d1 + (j - 1) * r.steady, _RUN_END, r, r.version)

    def _start_run(self, r: _Replica, t: float) -> None:
        model = r.model
        d1, admitted = model.start_step()
        first = self.first
        at = t + d1
        for s in admitted:
            first[s.tag] = at
        steady = model.steady_step_s()
        k = model.steps_to_next_finish()
        r.in_step, r.t0, r.d1, r.steady, r.k = True, t, d1, steady, k
        r.version += 1
        self._push(t + d1 + (k - 1) * steady, _RUN_END, r, r.version)

    def _run_end(self, r: _Replica, t: float) -> None:
        finished = r.model.finish(r.k)
        r.in_step = False
        done, status = self.done, self.status
        for s in finished:
            done[s.tag] = t
            status[s.tag] = 1
        r.ongoing -= len(finished)
        if self.queue and not r.draining:
            self._dispatch(t, r)
        if not r.model.idle:
            self._start_run(r, t)
        elif r.draining:
            self._stop(r, t)

    def _dispatch(self, t: float, only: _Replica | None = None) -> None:
        """Hand queued requests to replicas with a free slot (`only`, or any running one)."""
        q, m = self.queue, self.setup.max_ongoing_requests
        timeout = self.setup.request_timeout_s
        arrivals, prompts, outputs = self.trace.arrival_s, self.trace.prompt_tokens, self.trace.output_tokens
        while q:
            r = only if only is not None else self._route()
            if r is None or r.ongoing >= m:
                return
            i = q.popleft()
            if timeout is not None and t - arrivals[i] > timeout:
                self.status[i] = 3
                continue
            self._submit(r, i, t, prompts[i], outputs[i])

    # -- replicas --------------------------------------------------------------------------------
    def _cold_start(self) -> float:
        samples = self.setup.cold_start_samples_s
        return samples[int(self.rng.random() * len(samples))] if samples else self.lat.cold_start_s

    def _ready(self, r: _Replica, t: float) -> None:
        if r.stopped or r not in self.starting:
            return
        self.starting.remove(r)
        self.running.append(r)
        if self.queue:
            self._dispatch(t)

    def _stop(self, r: _Replica, t: float) -> None:
        if not r.stopped:
            r.stopped = True
            if r in self.draining:
                self.draining.remove(r)
            self._held(t, -1)

    def _kill(self, r: _Replica, t: float) -> None:
        if r.stopped:
            return
        for s in list(r.model.running.values()) + list(r.model.waiting):
            if self.status[s.tag] == 0:
                self.status[s.tag] = 4
        r.version += 1
        self._stop(r, t)

    def _scale_to(self, n: int, t: float) -> None:
        have = len(self.running) + len(self.starting)
        if n > have:
            for _ in range(n - have):
                r = _Replica(self.lat, t + self._cold_start())
                self.starting.append(r)
                self._held(t, 1)
                self._push(r.ready_at, _READY, r)
        elif n < have:
            drop = have - n
            while drop and self.starting:  # a replica still starting is the cheapest to give up
                r = self.starting.pop()
                r.stopped = True
                self._held(t, -1)
                drop -= 1
            for r in sorted(self.running, key=lambda r: r.ongoing)[:drop]:
                self.running.remove(r)
                r.draining = True
                if r.ongoing == 0:
                    r.stopped = True
                    self._held(t, -1)
                else:
                    self.draining.append(r)
                    self._push(t + self.setup.graceful_shutdown_timeout_s, _DEADLINE, r)
        if n != self.target:
            d = 1 if n > self.target else -1
            self.scale_events += 1
            self.flaps += self.last_dir == -d
            self.last_dir = d
            self.target = n

    # -- metrics and the policy --------------------------------------------------------------------
    def _sample(self, t: float) -> None:
        waiting = running = tokens = 0
        kv = 0.0
        for r in self.running:
            m = r.model
            waiting += len(m.waiting)
            running += len(m.running)
            tokens += m.waiting_tokens
            kv += m.kv_usage
        nrun = len(self.running)
        queued = len(self.queue)
        self.peak_queue = max(self.peak_queue, queued + waiting)
        samples = self.samples
        samples.append((t, queued, waiting, running, tokens, kv / nrun if nrun else -1.0))
        oldest = t - self.cfg.metrics_look_back_s
        while samples and samples[0][0] <= oldest:
            samples.popleft()
        k = len(samples)
        kvs = [s[5] for s in samples if s[5] >= 0]
        self.load = (sum(s[1] for s in samples) / k, sum(s[2] for s in samples) / k, sum(s[3] for s in samples) / k,
                     sum(s[4] for s in samples) / k, min(1.0, sum(kvs) / len(kvs)) if kvs else None)
        self.timeline.append((t, queued, waiting, running, nrun, len(self.starting), self.target))

    def _tick(self, t: float) -> None:
        queued, waiting, running, tokens, kv = self.load
        if not self.running and self.queue and self.target == 0:
            self._scale_to(1, t)  # Serve's cold-start fast path: a request at zero replicas wakes one
            return
        obs = Observation.model_construct(
            now_s=t, current_replicas=len(self.running), target_replicas=self.target,
            starting_replicas=len(self.starting), queued_requests=queued, waiting_requests=waiting,
            running_requests=running, waiting_tokens=tokens, kv_usage=kv, ttft_s=None)
        n = self.policy(obs)
        if n != len(self.running) + len(self.starting) or n != self.target:
            self._scale_to(n, t)

    def result(self) -> ReplayResult:
        end = max(self.end, self.horizon)
        self._held(end, 0)
        arr = self.trace.arrival_s
        first, done = self.first, self.done
        ttft = [f - a for f, a in zip(first, arr)]
        e2e = [d - a for d, a in zip(done, arr)]
        outs = self.trace.output_tokens
        tpot = [(d - f) / (o - 1) if o > 1 else _NAN for f, d, o in zip(first, done, outs)]
        st = self.status
        counts = [st.count(v) for v in range(5)]
        return ReplayResult(
            policy=self.policy.name, latency=self.lat.describe(), requests=len(arr), finished=counts[1],
            shed=counts[2], timed_out=counts[3], killed=counts[4], unfinished=counts[0], ttft_s=ttft, tpot_s=tpot,
            e2e_s=e2e, arrival_s=arr, replica_s=self.replica_s,
            gpu_hours=self.replica_s * self.lat.gpus_per_replica / 3600.0, scale_events=self.scale_events,
            flaps=self.flaps, peak_queue=self.peak_queue, horizon_s=end, timeline=self.timeline,
        )
