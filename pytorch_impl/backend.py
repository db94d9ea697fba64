"""PyTorch behind the common Backend interface."""
import numpy as np
import torch

from common.backend import Backend as BaseBackend, micro_batches
from common.decode import SamplingForm, cache_windows
from common.errors import UserError
from pytorch_impl.generate import EAGER, Steps, compile_options, compiled_steps, generate
from pytorch_impl import parallel
from pytorch_impl.model import GPT, KVCache, cross_entropy, from_canonical_like, load_canonical, to_canonical
from pytorch_impl.train import autocast, configure_optimizer, train_step


class Backend(BaseBackend):
    name = "pytorch"
    runtime = "PyTorch"
    device_kinds = {"cpu": "", "gpu": "install a CUDA build of torch"}

    def _build(self, params):
        config, train, replicas = self.config, self.train_config, self.replicas
        if parallel.launched_by_torchrun():
            self.rank, self.world_size, self.device = parallel.init_process_group(self.device)
            if self.world_size != max(replicas, self.shard):
                raise UserError(f"torchrun started {self.world_size} processes for a run of --replicas {replicas} "
                                f"--shard {self.shard}: start one process per device (--nproc_per_node, --nnodes).")
        elif replicas > 1 or self.shard > 1:
            raise UserError("PyTorch data parallelism runs one process per device: start it with torchrun "
                            "(benchmarks.run --replicas N or --shard N does).")
        # float32 means float32: no TF32 matmuls, so the GPU agrees with the CPU and the others.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.model = GPT(config).to(self.device)
        load_canonical(self.model, params)
        if self.shard > 1:  # every process loaded the whole model; each keeps its shards
            parallel.shard_fully(self.model)
        self.optimizer = configure_optimizer(self.model, train)
        self.gradient_bytes: int | None = None  # measured at each update
        self.optimizer.register_step_pre_hook(self._measure_gradients)
        self.amp = autocast(self.device.type, train.dtype)
        ddp = self.world_size > 1 and self.shard == 1
        trained = parallel.wrap(self.model, self.device) if ddp else self.model
        self.forward = torch.compile(trained) if train.compile else trained
        # The harness may flip it to time a compiled decode; a sharded model decodes eagerly.
        self.compiles_decode = self.decode_config.compile and self.shard == 1
        # Under DDP evaluation runs on one process only, so it must not enter DDP's collectives.
        self.evaluated = self.model if self.world_size > 1 else self.forward
        self.kv_caches: dict[int, KVCache] = {}  # by batch size: compiled steps keep meeting the same tensors
        self.decode_steps: dict[tuple, Steps] = {}  # by batch size and sampling form, when compiled

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(self.device, non_blocking=True)

    @parallel.collective
    def train_step(self, x, y, lr):
        batches = micro_batches(x, y, self.train_config.grad_accum)
        if self.world_size > 1:
            batches = [[parallel.shard(a, self.rank, self.world_size) for a in xy] for xy in batches]
        self.forward.train()
        loss = train_step(self.forward, self.optimizer, [[self._tensor(a) for a in xy] for xy in batches], lr,
                          self.train_config.grad_clip, self.amp)
        return (parallel.mean_over_replicas(loss) if self.world_size > 1 else loss).item()

    @parallel.collective
    @torch.no_grad()
    def eval_loss(self, x, y):
        self.evaluated.eval()
        with self.amp:
            logits, _ = self.evaluated(self._tensor(x))
            return cross_entropy(logits, self._tensor(y)).item()

    @parallel.collective
    @torch.no_grad()
    def logits(self, x):
        self.model.eval()
        with self.amp:
            logits, _ = self.model(self._tensor(x))
        return logits.float().cpu().numpy()

    @parallel.collective
    def loss_and_grads(self, x, y):
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        logits, _ = self.model(self._tensor(x))
        loss = cross_entropy(logits, self._tensor(y))
        loss.backward()
        grads = {n: parallel.whole(p.grad) for n, p in self.model.named_parameters()}
        result = loss.item(), to_canonical(self.model, grads)
        self.model.zero_grad(set_to_none=True)
        return result

    @parallel.collective
    def export_params(self):
        tensors = {n: parallel.whole(p) for n, p in self.model.named_parameters()}
        if self.quantized:
            from pytorch_impl.quantize import packed_linears
            tensors.update(packed_linears(self.model))  # FBGEMM's Linears keep their weights out of parameters
        return to_canonical(self.model, tensors)

    @parallel.collective
    def _adam_moments(self):
        named = dict(self.model.named_parameters())
        m, v = ({n: parallel.whole(self.optimizer.state[p][key] if p in self.optimizer.state else torch.zeros_like(p))
                 for n, p in named.items()} for key in ("exp_avg", "exp_avg_sq"))
        steps = [int(s["step"]) for s in self.optimizer.state.values() if "step" in s]
        return to_canonical(self.model, m), to_canonical(self.model, v), steps[0] if steps else 0

    def _load_adam_moments(self, m, v, count):
        named = dict(self.model.named_parameters())
        for key, arrays in (("exp_avg", m), ("exp_avg_sq", v)):
            for name, value in from_canonical_like(self.model, arrays).items():
                self.optimizer.state[named[name]][key] = parallel.sharded_like(value.to(named[name].dtype), named[name])
        # The fused AdamW keeps its step count on the parameters' device.
        step_device = self.device if self.device.type == "cuda" else "cpu"
        for p in named.values():
            self.optimizer.state[p]["step"] = torch.tensor(float(count), dtype=torch.float32, device=step_device)

    def _quantize(self, mode):
        from pytorch_impl.quantize import quantize
        quantize(self.model, mode)
        self.decode_steps.clear()  # compiled for the float weights

    @parallel.collective
    def _generate(self, tokens, seeds, plan):
        self.model.eval()
        cache = self._kv_cache(len(tokens)) if plan.program.use_cache else None
        # inference_mode: the tensors each step makes carry no version counter or autograd state. Not
        # under FSDP, whose weights gathered in it would stay inference tensors, which training cannot update.
        with torch.no_grad() if self.shard > 1 else torch.inference_mode(), self.amp:
            return generate(self.model, self._tensor(tokens), plan, seeds, cache,
                            self._decode_steps(len(tokens), plan.program.sampling)).cpu().numpy()

    def _decode_steps(self, batch_size: int, form: SamplingForm) -> Steps:
        if not self.compiles_decode:
            return EAGER
        if (batch_size, form) not in self.decode_steps:
            sharing = next((steps for (b, _), steps in self.decode_steps.items() if b == batch_size), None)
            self.decode_steps[batch_size, form] = compiled_steps(self.device.type, sharing)
        return self.decode_steps[batch_size, form]

    def _kv_cache(self, batch_size: int) -> KVCache:
        if batch_size not in self.kv_caches:
            cache = KVCache.empty(self.config, batch_size, self.device, self.model.wte.weight.dtype)
            if self.compiles_decode:
                # CUDA graphs may then write the cache in place, where they would copy it at every step.
                for window in map(cache.window, cache_windows(self.config.block_size)):
                    for t in (*window.keys, *window.values, window.length, window.slots):
                        torch._dynamo.mark_static_address(t)
            self.kv_caches[batch_size] = cache
        return self.kv_caches[batch_size]

    def serve(self):
        parallel.serve(self)

    def close(self):
        if self.shard > 1 and self.rank == 0:
            parallel.stop_serving()
        parallel.shutdown()

    def state_bytes(self):
        if self.gradient_bytes is None:  # no update in this process (a run resumed after its last step)
            return None
        params = list(self.model.parameters())
        moments = [t for p in params for key, t in self.optimizer.state.get(p, {}).items() if key != "step"]
        return {"params": _local_bytes(params), "grads": self.gradient_bytes, "adam": _local_bytes(moments)}

    def _measure_gradients(self, optimizer, args, kwargs) -> None:
        # Before each update, while the step's gradients exist (FSDP has reduce-scattered them to shards).
        self.gradient_bytes = _local_bytes([p.grad for p in self.model.parameters() if p.grad is not None])

    def device_info(self):
        info = {"framework_version": torch.__version__, "device": "cpu", "device_name": "cpu",
                "device_count": 1, "threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            info.update(device="gpu", device_name=torch.cuda.get_device_name(self.device),
                        device_count=torch.cuda.device_count())
        elif self.device.type == "mps":
            info.update(device="mps", device_name="Apple MPS")
        return info

    def settings(self):
        decode = compile_options(self.device.type) if self.compiles_decode else "eager"
        if isinstance(decode, dict) and "options" in decode:  # the guard filter by its name
            decode["options"] = {k: getattr(v, "__name__", v) for k, v in decode["options"].items()}
        return {**super().settings(), "decode_compile": decode}

    def peak_memory_bytes(self):
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def reset_peak_memory(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def profile(self, log_dir):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        return torch.profiler.profile(activities=activities,
                                      on_trace_ready=torch.profiler.tensorboard_trace_handler(log_dir))

    # --- looking inside ------------------------------------------------------------------------
    @parallel.collective
    @torch.no_grad()
    def _inspect(self, ids):
        from pytorch_impl.model import inspect
        self.model.eval()
        with self.amp:
            return [t.float().cpu().numpy() for t in inspect(self.model, self._tensor(ids))]


def _local_bytes(tensors) -> int:
    return sum(parallel.local(t).nbytes for t in tensors)
