"""Optimizer-wrapper constructor adding the AdderNet adaptive learning rate."""
import copy
import logging

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from adder_mm.models.layers import AdderConv2d

from .adder_grad_normalizer import (
    AdderGradNormalizer,
    _check_eta,
    check_float32_positive,
)

# Keys this constructor consumes; everything else in paramwise_cfg goes to
# DefaultOptimWrapperConstructor untouched.
ADDER_KEYS = ('adder_eta', 'adder_eps', 'adder_log')
# What DefaultOptimWrapperConstructor (mmengine 0.10) reads from
# paramwise_cfg and from each of its custom_keys entries; with ADDER_KEYS,
# the names the --cfg-options check accepts under paramwise_cfg.
PARENT_PARAMWISE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult',
                         'norm_decay_mult', 'dwconv_decay_mult',
                         'flat_decay_mult', 'dcn_offset_lr_mult',
                         'bypass_duplicate')
PARENT_CUSTOM_KEY_OPTIONS = ('lr_mult', 'decay_mult')


# Registered in MMEngine's root registry: mmpretrain's OPTIM_WRAPPER_
# CONSTRUCTORS is its child and falls back to it, so configs find the name
# with default_scope='mmpretrain' as well as with no default scope.
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class AdderOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """DefaultOptimWrapperConstructor plus the paper's adaptive learning rate.

    Every ``AdderConv2d`` weight of the model (found at any depth, also
    behind a DDP/``module`` wrapper) has its gradient replaced, right before
    each optimizer step, by ``eta * sqrt(k) * g / max(||g||_2, eps)`` with
    ``k = g.numel()`` (paper Eq. 13, one scalar per layer). See
    :class:`AdderGradNormalizer` for why a step pre-hook is the right place
    under AMP, gradient accumulation, DDP and gradient clipping. The hook
    lives on the optimizer, so any OptimWrapper type (``AmpOptimWrapper``
    for ``--amp``) works; it is also kept on the wrapper as
    ``optim_wrapper.adder_grad_normalizer``.

    Adder-specific ``paramwise_cfg`` keys (removed before the parent sees
    the config, so all of its options keep their meaning):

    - ``adder_eta`` (float): eta of Eq. 13. Defaults to 0.2 (paper's code).
    - ``adder_eps`` (float): lower bound of the gradient norm. Defaults to
      1e-12.
    - ``adder_log`` (bool): log every layer's ``alpha_l`` to the MessageHub
      as ``train/adder_scale/<layer>``. Defaults to False.
    - ``custom_keys[key]['adder_eta']``: eta for the adder weights whose
      parameter name contains ``key``; the longest such key wins (ties:
      alphabetical), as for the parent's custom keys. An entry holding only
      ``adder_eta`` is dropped before the parent sees it, so the parent's
      other rules still apply to those parameters.

    Example:
        >>> optim_wrapper = dict(
        ...     constructor='AdderOptimWrapperConstructor',
        ...     optimizer=dict(type='SGD', lr=0.1, momentum=0.9,
        ...                    weight_decay=5e-4),
        ...     paramwise_cfg=dict(adder_eta=0.2))
    """
    paramwise_keys = PARENT_PARAMWISE_KEYS + ADDER_KEYS
    custom_key_options = PARENT_CUSTOM_KEY_OPTIONS + ('adder_eta', )

    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        if paramwise_cfg is None:
            paramwise_cfg = {}
        if not isinstance(paramwise_cfg, dict):
            raise TypeError('paramwise_cfg should be None or a dict, '
                            f'but got {type(paramwise_cfg)}')
        paramwise_cfg = copy.deepcopy(dict(paramwise_cfg))
        unknown = [k for k in paramwise_cfg
                   if k.startswith('adder_') and k not in ADDER_KEYS]
        if unknown:
            raise ValueError(f'Unknown adder option(s) {unknown} in '
                             f'paramwise_cfg; expected some of {ADDER_KEYS}')
        self.adder_eta = paramwise_cfg.pop('adder_eta', 0.2)
        _check_eta(self.adder_eta, 'paramwise_cfg')
        self.adder_eps = paramwise_cfg.pop('adder_eps', 1e-12)
        check_float32_positive(self.adder_eps, 'paramwise_cfg.adder_eps')
        self.adder_log = paramwise_cfg.pop('adder_log', False)
        if not isinstance(self.adder_log, bool):
            raise TypeError('paramwise_cfg.adder_log must be a bool, got '
                            f'{self.adder_log!r}')

        self.adder_custom_etas = {}
        custom_keys = paramwise_cfg.get('custom_keys')
        if isinstance(custom_keys, dict):
            for key in list(custom_keys):
                options = custom_keys[key]
                if not isinstance(options, dict):
                    continue  # the parent reports it
                unknown = [k for k in options
                           if k.startswith('adder_') and k != 'adder_eta']
                if unknown:
                    raise ValueError(
                        f'custom_keys[{key!r}] has unknown adder option(s) '
                        f'{unknown}; only adder_eta can be set per key')
                if 'adder_eta' in options:
                    eta = options.pop('adder_eta')
                    _check_eta(eta, f'custom_keys[{key!r}]')
                    self.adder_custom_etas[key] = eta
                    if not options:
                        del custom_keys[key]
            if not custom_keys:
                del paramwise_cfg['custom_keys']
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def adder_params(self, model):
        """``(name, weight, eta)`` for every trainable AdderConv2d weight.

        Names are relative to the model the parent builds param groups from
        (one ``module`` wrapper removed), so custom_keys match the same way.
        """
        if hasattr(model, 'module'):
            model = model.module
        # Longest key first, ties alphabetical: the parent's matching rule.
        keys = sorted(sorted(self.adder_custom_etas), key=len, reverse=True)
        used_keys = set()
        found = []
        for name, module in model.named_modules():
            if not isinstance(module, AdderConv2d):
                continue
            if not module.weight.requires_grad:
                continue  # frozen: the parent leaves it out of the optimizer
            param_name = f'{name}.weight' if name else 'weight'
            eta = self.adder_eta
            for key in keys:
                if key in param_name:
                    eta = self.adder_custom_etas[key]
                    used_keys.add(key)
                    break
            found.append((name, module.weight, eta))
        unused = sorted(set(keys) - used_keys)
        if unused:
            print_log(f'AdderOptimWrapperConstructor: custom_keys {unused} '
                      'set adder_eta but match no adder weight',
                      logger='current', level=logging.WARNING)
        return found

    def __call__(self, model):
        optim_wrapper = super().__call__(model)
        params = self.adder_params(model)
        if not params:
            print_log('AdderOptimWrapperConstructor: the model has no '
                      'trainable AdderConv2d; the optimizer is left as the '
                      'default constructor builds it',
                      logger='current', level=logging.WARNING)
            optim_wrapper.adder_grad_normalizer = None
            return optim_wrapper
        normalizer = AdderGradNormalizer(
            params, eps=self.adder_eps, log=self.adder_log)
        normalizer.attach(optim_wrapper.optimizer)
        optim_wrapper.adder_grad_normalizer = normalizer
        etas = sorted(set(normalizer.etas))
        print_log(f'AdderOptimWrapperConstructor: adaptive learning rate on '
                  f'{len(normalizer.params)} adder weights, eta={etas}',
                  logger='current')
        return optim_wrapper
