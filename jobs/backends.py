"""Data-parallel backends behind one small interface (:class:`Comm`): single, Horovod, DDP.

The training loop (jobs/train) only calls the methods below, so one loop serves all three.
Engines are imported inside the classes: ``import jobs.backends`` stays light.

Gradient averaging
------------------
* ``horovod``: ``hvd.DistributedOptimizer`` (allreduce-average overlapped with backward through
  its gradient hooks), its gradients grouped into buckets of ~25 MB in reverse parameter order
  like DDP's (``groups=``; ``HEPSCAN_HOROVOD_BUCKET_MB``, 0 = one allreduce per parameter):
  one negotiation and one fused allreduce per bucket instead of one per parameter spread over
  several of Horovod's cycles. Families with several optimizers (the GAN) run a backward whose graph
  reaches the *other* optimizer's parameters (generator loss through the critic); Horovod's hooks
  then start allreduces for those parameters too, and the next ``zero_grad()`` of that optimizer
  would raise "zero_grad() was called after loss.backward() but before optimizer.step()".
  :meth:`HorovodComm.step` first drains such pending allreduces with ``synchronize()`` (collective;
  every rank has the same pending set because every rank runs the same graph).
* ``ddp``: the model is *not* wrapped in ``DistributedDataParallel``. DDP only averages gradients
  produced through ``DDP.forward``; families whose ``training_step`` calls sub-modules directly
  (GAN generator/critic, flows' ``log_prob``) would silently train without synchronisation, and
  DDP's "find_unused_parameters" rules break on multi-optimizer steps. Instead
  :class:`DdpComm` allreduce-averages the optimizer's gradients in buckets (~25 MB, parameters
  in reverse order) started *during* ``backward()`` from per-parameter post-accumulate hooks,
  in bucket order on every rank, as DDP does, so communication overlaps the rest of the
  backward pass; :meth:`DdpComm.step` waits for them before ``optimizer.step()``. The same
  arithmetic as DDP (sum / world size), valid for any family.

Mixed precision: ``step(optimizer, loss, scaler)`` takes an optional ``torch.amp.GradScaler``
(``precision: fp16``): the scaled loss is back-propagated, gradients are averaged, then
``scaler.step``/``scaler.update``; every rank sees the same averaged gradients, so every rank
skips the same overflowing steps.

Both give, with equal per-rank batch sizes and a mean-reduced loss, the gradient of the whole
global batch, hence the same weights as one process (tests/test_train_distributed.py).

Rendezvous
----------
* Horovod: ``hvd.init()`` reads the environment that ``horovodrun``/``horovod.runner.run`` or
  ``horovod.ray.RayExecutor`` set up.
* DDP: ``torch.distributed.init_process_group(init_method="env://")`` from ``MASTER_ADDR``,
  ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` (``LOCAL_RANK`` picks the GPU), unless a process
  group already exists. gloo on CPU, nccl when training on CUDA.

Collective timeout
------------------
A rank that dies (killed, its node lost) would leave the others blocked in their next
collective. Every collective therefore gives up after ``HEPSCAN_COLLECTIVE_TIMEOUT_S`` seconds
(:func:`collective_timeout`, default :data:`DEFAULT_COLLECTIVE_TIMEOUT_S` = 300; a scan sets it
from ``resources.collective_timeout_s``): DDP passes it to ``init_process_group(timeout=)``
(gloo and nccl honour it), Horovod reads ``HOROVOD_GLOO_TIMEOUT_SECONDS``, which
:func:`collective_timeout_env` sets to the same value. The value must exceed the longest
stretch one rank computes alone between two collectives (rank 0's evaluation of a family
without streamed evaluation, checkpoint writing).

Horovod tuning
--------------
Every Horovod rank starts with :func:`horovod_env` applied (:meth:`HorovodComm.init`, before
``hvd.init()``): ``HOROVOD_CYCLE_TIME`` and ``HOROVOD_CACHE_CAPACITY`` keep a numeric value
the user set and otherwise get :data:`HOROVOD_DEFAULTS`. ``horovod.runner.run`` (0.28.1) sets
both to the string ``"(None,)"`` (a stray comma in its argument defaults), overriding the
caller's environment; Horovod's core reads that as 0: a background thread that never sleeps
between negotiation cycles and no response cache, so every cycle is a full gloo negotiation
competing with the training threads for the cores. On 2 cores that made 2-rank Horovod 0.62x
of DDP's samples/s (``benchmarks/horovod_vs_ddp.py``; docs/benchmarks.md). ``jobs.train``
reads the launching process's values and hands them to the ranks itself.
"""

from __future__ import annotations

import datetime
import math
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.errors import ConfigError, require

BACKENDS = ("single", "horovod", "ddp")
TIMEOUT_ENV = "HEPSCAN_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0


def collective_timeout() -> float:
    """Seconds a collective waits for the other ranks (``HEPSCAN_COLLECTIVE_TIMEOUT_S``)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_COLLECTIVE_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be > 0")
    return value


# Horovod's own defaults, restored where horovod.runner.run breaks them (module docstring).
HOROVOD_DEFAULTS: dict[str, str] = {"HOROVOD_CYCLE_TIME": "1", "HOROVOD_CACHE_CAPACITY": "1024"}


def horovod_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Horovod tuning for the ranks: each key of :data:`HOROVOD_DEFAULTS` keeps its value in
    ``environ`` (default ``os.environ``) when that is a number, else gets the default."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, default in HOROVOD_DEFAULTS.items():
        raw = environ.get(key, "")
        try:
            ok = math.isfinite(float(raw)) and float(raw) >= 0
        except ValueError:
            ok = False
        out[key] = raw.strip() if ok else default
    return out


HOROVOD_BUCKET_ENV = "HEPSCAN_HOROVOD_BUCKET_MB"


def horovod_bucket_bytes() -> int:
    """Bytes per Horovod gradient bucket (``HEPSCAN_HOROVOD_BUCKET_MB``, default 25; 0 = one
    allreduce per parameter)."""
    raw = os.environ.get(HOROVOD_BUCKET_ENV, "25")
    try:
        mb = float(raw)
    except ValueError:
        raise ConfigError(f"{HOROVOD_BUCKET_ENV}={raw!r}: expected a number of MB") from None
    if not (math.isfinite(mb) and mb >= 0):
        raise ConfigError(f"{HOROVOD_BUCKET_ENV}={raw!r}: must be >= 0")
    return int(mb * 2**20)


def gradient_buckets(params: list[Tensor], bucket_bytes: int) -> list[list[Tensor]]:
    """``params`` (those that take gradients) in reverse order, cut into buckets of at least
    ``bucket_bytes`` (the last one smaller): the order backward produces their gradients."""
    buckets: list[list[Tensor]] = []
    cur: list[Tensor] = []
    nbytes = 0
    for p in reversed([p for p in params if p.requires_grad]):
        cur.append(p)
        nbytes += p.numel() * p.element_size()
        if nbytes >= bucket_bytes:
            buckets.append(cur)
            cur, nbytes = [], 0
    if cur:
        buckets.append(cur)
    return buckets


def collective_timeout_env(seconds: float) -> dict[str, str]:
    """The environment that gives every rank's collectives a ``seconds`` timeout."""
    whole = str(max(1, math.ceil(seconds)))
    return {TIMEOUT_ENV: repr(float(seconds)), "HOROVOD_GLOO_TIMEOUT_SECONDS": whole}


class Comm:
    """Single process: every collective is the identity."""

    name = "single"

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1
        self.local_rank = 0

    def init(self, device: torch.device | str = "cpu") -> None:
        """Join the process group (no-op for a single process); ``device`` is this rank's."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)

    def allreduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average a dict of floats over ranks; keys must be the same on every rank."""
        return {k: float(v) for k, v in values.items()}

    def allreduce_sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over ranks (a new tensor; same shape everywhere)."""
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        return obj

    def broadcast_model(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""

    def broadcast_optimizers(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Copy rank 0's optimizer states to every rank."""

    def wrap_optimizers(
        self, model: nn.Module, optimizers: list[torch.optim.Optimizer]
    ) -> list[torch.optim.Optimizer]:
        return optimizers

    def step(self, optimizer: torch.optim.Optimizer, loss: Tensor, scaler: Any = None) -> None:
        """The ``step_fn`` handed to ``training_step`` (``scaler``: fp16 loss scaling)."""
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def finish_epoch(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Drain anything asynchronous before evaluation/checkpointing."""

    def barrier(self) -> None:
        """Wait for every rank."""

    def shutdown(self) -> None:
        """Leave the process group if this object created it."""


class HorovodComm(Comm):
    name = "horovod"

    def __init__(self) -> None:
        super().__init__()
        hvd = require("horovod.torch")

        self.hvd = hvd

    def init(self, device: torch.device | str = "cpu") -> None:
        super().init(device)  # the rank's own GPU (jobs.placement), before NCCL starts
        hvd = self.hvd
        if not hvd.is_initialized():
            os.environ.update(horovod_env())
            os.environ.setdefault(
                "HOROVOD_GLOO_TIMEOUT_SECONDS", str(max(1, math.ceil(collective_timeout())))
            )
            hvd.init()
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def allreduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        out = self.hvd.allreduce(t, op=self.hvd.Average, name="hepscan.metrics")
        return dict(zip(keys, out.tolist(), strict=True))

    def allreduce_sum(self, tensor: Tensor) -> Tensor:
        out: Tensor = self.hvd.allreduce(tensor, op=self.hvd.Sum, name="hepscan.sum")
        return out

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0, name="hepscan.object")

    def broadcast_model(self, model: nn.Module) -> None:
        state = model.state_dict()
        # Horovod broadcasts no bool tensors (e.g. the resolution family's mask buffers):
        # those travel as uint8.
        plain = {k: v for k, v in state.items() if v.dtype != torch.bool}
        self.hvd.broadcast_parameters(plain, root_rank=0)
        for k, v in state.items():
            if v.dtype == torch.bool:
                as_int = v.to(torch.uint8)
                self.hvd.broadcast_(as_int, root_rank=0, name=f"hepscan.bool.{k}")
                v.copy_(as_int.bool())

    def broadcast_optimizers(self, optimizers: list[torch.optim.Optimizer]) -> None:
        for opt in optimizers:
            # A fresh optimizer has no state, and every rank built it from the same broadcast
            # parameters, so there is nothing to send. hvd.broadcast_optimizer_state would
            # "initialise" it with a zero-gradient step, advancing Adam's step counter (and
            # applying weight decay): 2 ranks would then differ from 1 process.
            if opt.state_dict()["state"]:
                self.hvd.broadcast_optimizer_state(opt, root_rank=0)

    def wrap_optimizers(
        self, model: nn.Module, optimizers: list[torch.optim.Optimizer]
    ) -> list[torch.optim.Optimizer]:
        wrapped = []
        bucket_bytes = horovod_bucket_bytes()
        for opt in optimizers:
            own = {id(p) for g in opt.param_groups for p in g["params"]}
            named = [(n, p) for n, p in model.named_parameters() if id(p) in own]
            groups = gradient_buckets([p for _, p in named], bucket_bytes) if bucket_bytes else None
            wrapped.append(
                self.hvd.DistributedOptimizer(
                    opt, named_parameters=named, op=self.hvd.Average, groups=groups
                )
            )
        return wrapped

    def step(self, optimizer: torch.optim.Optimizer, loss: Tensor, scaler: Any = None) -> None:
        if getattr(optimizer, "_handles", None):
            optimizer.synchronize()  # type: ignore[attr-defined]  # see module docstring
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            optimizer.step()
            return
        scaler.scale(loss).backward()
        optimizer.synchronize()  # type: ignore[attr-defined]  # averaged, still scaled
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():  # type: ignore[attr-defined]
            scaler.step(optimizer)
        scaler.update()

    def finish_epoch(self, optimizers: list[torch.optim.Optimizer]) -> None:
        for opt in optimizers:
            if getattr(opt, "_handles", None):
                opt.synchronize()  # type: ignore[attr-defined]

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), name="hepscan.barrier")


class DdpComm(Comm):
    name = "ddp"

    def __init__(self, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self._want_rank = rank
        self._want_size = world_size
        self._owns_group = False
        self.device = torch.device("cpu")

    def init(self, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        device = torch.device(device)
        device_type = device.type
        super().init(device)
        if not dist.is_initialized():
            needed = ["MASTER_ADDR", "MASTER_PORT"]
            needed += ["RANK"] if self._want_rank is None else []
            needed += ["WORLD_SIZE"] if self._want_size is None else []
            missing = [k for k in needed if k not in os.environ]
            if missing:
                raise ConfigError(
                    f"backend 'ddp': environment variables {missing} are not set "
                    "(launch with 'hepscan train --workers N --backend ddp' or set "
                    "MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE)"
                )
            rank = self._want_rank if self._want_rank is not None else int(os.environ["RANK"])
            size = self._want_size if self._want_size is not None else int(os.environ["WORLD_SIZE"])
            backend = "nccl" if device_type == "cuda" else "gloo"
            timeout = datetime.timedelta(seconds=collective_timeout())
            dist.init_process_group(
                backend, init_method="env://", rank=rank, world_size=size, timeout=timeout
            )
            self._owns_group = True
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        if device_type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def allreduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.size).tolist(), strict=True))

    def allreduce_sum(self, tensor: Tensor) -> Tensor:
        import torch.distributed as dist

        out = tensor.to(self.device, copy=True)  # nccl reduces device tensors only
        dist.all_reduce(out)
        return out.to(tensor.device)

    def broadcast_object(self, obj: Any) -> Any:
        import torch.distributed as dist

        # Pickle to bytes ourselves: broadcast_object_list would unpickle tensors onto the
        # sender's device; bytes keep checkpoints on CPU until the loop moves them.
        box = [pickle.dumps(obj) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        assert box[0] is not None
        return pickle.loads(box[0])

    def broadcast_model(self, model: nn.Module) -> None:
        import torch.distributed as dist

        for t in model.state_dict().values():
            dist.broadcast(t, src=0)

    def broadcast_optimizers(self, optimizers: list[torch.optim.Optimizer]) -> None:
        for opt in optimizers:
            state = opt.state_dict()
            if state["state"]:  # fresh optimizers are identical already (see HorovodComm)
                opt.load_state_dict(self.broadcast_object(state))

    def wrap_optimizers(
        self, model: nn.Module, optimizers: list[torch.optim.Optimizer]
    ) -> list[torch.optim.Optimizer]:
        self._overlap = {id(opt): GradientBuckets(opt, self.size) for opt in optimizers}
        return optimizers

    def step(self, optimizer: torch.optim.Optimizer, loss: Tensor, scaler: Any = None) -> None:
        buckets = self._overlap.get(id(optimizer)) if hasattr(self, "_overlap") else None
        if buckets is None:  # an optimizer not seen by wrap_optimizers
            buckets = self._overlap.setdefault(id(optimizer), GradientBuckets(optimizer, self.size))
        optimizer.zero_grad()
        buckets.begin()
        try:
            (loss if scaler is None else scaler.scale(loss)).backward()
        finally:
            buckets.finish()
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


class GradientBuckets:
    """All-reduce-average of one optimizer's gradients, overlapped with ``backward()``.

    Parameters are grouped in reverse order into buckets of about ``bucket_bytes``. A
    post-accumulate-grad hook counts each parameter's gradient as ready; once every gradient of
    the next bucket in line is ready, its flattened copy is all-reduced asynchronously. Buckets
    start in index order on every rank (the collectives match across ranks); :meth:`finish`
    starts the rest (parameters that got no gradient this time), waits, and writes the averages
    back. Hooks fire only between :meth:`begin` and :meth:`finish`, so a backward that reaches
    another optimizer's parameters (the GAN's generator loss) starts nothing for them.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, size: int, bucket_bytes: int = 25 << 20
    ) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.size = size
        self.buckets: list[list[Tensor]] = []
        self.where: dict[int, int] = {}
        cur: list[Tensor] = []
        nbytes = 0
        for p in reversed(params):
            cur.append(p)
            nbytes += p.numel() * p.element_size()
            if nbytes >= bucket_bytes:
                self.buckets.append(cur)
                cur, nbytes = [], 0
        if cur:
            self.buckets.append(cur)
        for i, bucket in enumerate(self.buckets):
            for p in bucket:
                self.where[id(p)] = i
                p.register_post_accumulate_grad_hook(self._ready)
        self.active = False
        self._reset()

    def _reset(self) -> None:
        self.ready = [0] * len(self.buckets)
        self.next = 0
        self.pending: list[tuple[Any, Tensor, list[Tensor]]] = []

    def begin(self) -> None:
        self._reset()
        self.active = True

    def _ready(self, p: Tensor) -> None:
        if not self.active:
            return
        self.ready[self.where[id(p)]] += 1
        while self.next < len(self.buckets) and self.ready[self.next] == len(
            self.buckets[self.next]
        ):
            self._launch(self.next)
            self.next += 1

    def _launch(self, i: int) -> None:
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors

        grads = [p.grad for p in self.buckets[i] if p.grad is not None]
        if grads:
            flat = _flatten_dense_tensors(grads)
            self.pending.append((dist.all_reduce(flat, async_op=True), flat, grads))

    def finish(self) -> None:
        from torch._utils import _unflatten_dense_tensors

        self.active = False
        while self.next < len(self.buckets):
            self._launch(self.next)
            self.next += 1
        for handle, flat, grads in self.pending:
            handle.wait()
            flat /= self.size
            for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
                g.copy_(avg)
        self.pending = []


def make_comm(backend: str, rank: int | None = None, world_size: int | None = None) -> Comm:
    """The :class:`Comm` for a backend name (``single`` | ``horovod`` | ``ddp``)."""
    if backend == "single":
        return Comm()
    if backend == "horovod":
        return HorovodComm()
    if backend == "ddp":
        return DdpComm(rank, world_size)
    raise ConfigError(f"backend {backend!r} unknown (choose from {', '.join(BACKENDS)})")
