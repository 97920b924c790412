"""The paper's adaptive learning rate (Eq. 13) as an optimizer step pre-hook.

For adder layer ``l`` with filter gradient ``g_l`` (``k_l`` elements) the
optimizer sees ``alpha_l * g_l`` with ``alpha_l = eta * sqrt(k_l) /
max(||g_l||_2, eps)``: one scalar per layer, recomputed every step.

Running inside ``optimizer.step()`` means it sees exactly the gradient the
step consumes: after AMP unscaling (GradScaler unscales before calling step,
and does not call step at all when it found inf/nan), after the last
micro-batch of gradient accumulation (OptimWrapper only steps then), after
the DDP all-reduce (done during backward) and after gradient clipping
(OptimWrapper clips before stepping); and before SGD adds weight decay and
momentum, which it does inside step.
"""
import math

import torch


class AdderGradNormalizer:
    """Rescale adder-layer gradients in place before each optimizer step.

    Args:
        params (list[tuple[str, torch.nn.Parameter, float]]): ``(name,
            weight, eta)`` per adder layer; ``name`` is used for logging only.
        eps (float): Lower bound on the gradient norm, so an all-zero
            gradient stays zero instead of becoming nan. Defaults to 1e-12.
        log (bool): Put each layer's ``alpha_l`` into the current MessageHub
            as ``train/adder_scale/<name>`` every step (one host sync per
            step). Defaults to False (no host sync at all).

    Attributes:
        num_steps (int): Steps that were normalised. Steps that AMP's
            GradScaler skips for inf/nan never reach the hook and are not
            counted.
    """

    def __init__(self, params, eps=1e-12, log=False):
        check_float32_positive(eps, 'AdderGradNormalizer: eps')
        seen = set()
        self.names, self.params, self.etas = [], [], []
        for name, param, eta in params:
            if not isinstance(param, torch.Tensor):
                raise TypeError(f'AdderGradNormalizer: {name} is a '
                                f'{type(param).__name__}, not a tensor')
            _check_eta(eta, name)
            if not eta * math.sqrt(param.numel()) <= _FLOAT32_MAX:
                raise ValueError(
                    f'adder_eta for {name}: eta * sqrt(k) = {eta} * '
                    f'sqrt({param.numel()}) overflows float32')
            if id(param) in seen:  # a weight shared by two layers
                continue
            seen.add(id(param))
            self.names.append(name)
            self.params.append(param)
            self.etas.append(float(eta))
        self.eps = float(eps)
        self.log = bool(log)
        self.num_steps = 0
        self.optimizer = None
        self._handle = None
        self._coef_cache = {}

    def attach(self, optimizer):
        """Register on ``optimizer`` as a step pre-hook; returns self."""
        if self.optimizer is not None:
            raise RuntimeError('AdderGradNormalizer is already attached to '
                               'an optimizer')
        in_optimizer = {id(p) for group in optimizer.param_groups
                        for p in group['params']}
        missing = [n for n, p in zip(self.names, self.params)
                   if id(p) not in in_optimizer]
        if missing:
            raise ValueError('AdderGradNormalizer: these adder weights are '
                             f'not optimised by the optimizer: {missing}')
        self.optimizer = optimizer
        self._handle = optimizer.register_step_pre_hook(self)
        return self

    def detach(self):
        """Remove the hook from the optimizer."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self.optimizer = None

    @torch.no_grad()
    def scales(self):
        """Per-layer ``alpha_l`` for the current gradients, as a 1-D tensor.

        Layers without a gradient get 1. A layer whose gradient norm is not
        finite also gets 1: its gradient is left as it is, so that an inf/nan
        is neither hidden nor made worse.
        """
        return self._scales()[0]

    def _scales(self):
        """``(scales, groups)``: scales as in :meth:`scales`; groups maps
        (device, dtype) to (layer indices, their grads, their scales)."""
        groups = {}
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is not None:
                key = (grad.device, grad.dtype)
                groups.setdefault(key, ([], []))
                groups[key][0].append(i)
                groups[key][1].append(grad)
        out = [None] * len(self.params)
        result = {}
        # One fused norm and one fused multiply per device/dtype instead of
        # a few kernels per layer: ResNet-50 has 53 adder layers.
        for (device, dtype), (index, grads) in groups.items():
            # At least fp32: a half-precision sum of squares overflows.
            norm_dtype = torch.promote_types(dtype, torch.float32)
            norms = torch.stack(
                torch._foreach_norm(grads, 2, dtype=norm_dtype))
            coef = self._coefficients(device, index)
            scale = coef / norms.clamp_min(self.eps)
            scale = torch.where(torch.isfinite(norms), scale,
                                torch.ones_like(scale))
            result[(device, dtype)] = (index, grads, scale)
            for i, value in zip(index, scale.unbind(0)):
                out[i] = value
        if not out:
            return torch.ones(0), result
        first = next((t.device for t in out if t is not None),
                     torch.device('cpu'))
        out = [torch.ones((), device=first) if t is None else t.to(first)
               for t in out]
        return torch.stack(out), result

    def _coefficients(self, device, index):
        """``eta_l * sqrt(k_l)`` for the layers in index, cached on device
        (built once, not copied host-to-device every step)."""
        key = (device, tuple(index))
        coef = self._coef_cache.get(key)
        if coef is None:
            coef = torch.tensor(
                [self.etas[i] * math.sqrt(self.params[i].numel())
                 for i in index],
                dtype=torch.float32,
                device=device)
            self._coef_cache[key] = coef
        return coef

    @torch.no_grad()
    def __call__(self, optimizer, args, kwargs):
        scales, groups = self._scales()
        for (_, dtype), (_, grads, scale) in groups.items():
            scale = list(scale.unbind(0))
            if scale[0].dtype == dtype:
                torch._foreach_mul_(grads, scale)
            else:
                # float16/bfloat16: multiply in float32 and round once. The
                # scale itself can exceed float16 (an all-zero gradient's is
                # eta sqrt(k) / eps), and 0 * inf is nan.
                wide = torch._foreach_mul([g.float() for g in grads], scale)
                for grad, value in zip(grads, wide):
                    grad.copy_(value)
        self.num_steps += 1
        if self.log:
            from mmengine.logging import MessageHub
            hub = MessageHub.get_current_instance()
            for name, value in zip(self.names, scales.tolist()):
                hub.update_scalar(f'train/adder_scale/{name}', value)
        return None

    # torch.optim.Optimizer pickles only defaults/state/param_groups, so a
    # deep-copied or unpickled optimizer has no step hooks. The normalizer
    # travels with the OptimWrapper (as ``adder_grad_normalizer``) and
    # re-attaches itself to the copied optimizer here.
    def __getstate__(self):
        state = self.__dict__.copy()
        state['_handle'] = None
        state['_coef_cache'] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        optimizer = self.optimizer
        if optimizer is not None:
            self.optimizer = None
            self.attach(optimizer)

    def __repr__(self):
        return (f'{type(self).__name__}(layers={len(self.params)}, '
                f'etas={sorted(set(self.etas))}, eps={self.eps}, '
                f'log={self.log})')


_FLOAT32_MAX = torch.finfo(torch.float32).max
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def check_float32_positive(value, what):
    """A positive number that float32 holds as a normal number (the scales
    are computed in float32: a smaller eps flushes to 0, and 0 * inf is nan;
    a larger or infinite one overflows or zeroes every update)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not _FLOAT32_TINY <= value <= _FLOAT32_MAX:
        raise ValueError(f'{what} must be a positive number within float32 '
                         f'({_FLOAT32_TINY:.3g} to {_FLOAT32_MAX:.3g}), got '
                         f'{value!r}')


def _check_eta(eta, name):
    check_float32_positive(eta, f'adder_eta for {name}')
