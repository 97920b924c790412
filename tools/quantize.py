"""Quantization of a trained AdderNet from its config: post-training, or
the conversion of a quantization-aware trained one to integers.

    python tools/quantize.py configs/adder_r20_digits.py CKPT.pth \\
        --bits 8 --method shared --calib-batches 8 --out Q.pth
    python tools/test.py configs/adder_r20_digits.py Q.pth
    python tools/quantize.py configs/adder_r20_digits_int4_qat.py \\
        QAT_CKPT.pth --out Q4.pth

Evaluates the float model on the config's test set, calibrates on
``--calib-batches`` batches of its training images (test pipeline), replaces
every adder layer by an integer QuantAdderConv2d (``--method shared``: one
grid per layer for weights and input; ``grouped``: clamped ranges and a grid
per group of output channels, see adder_mm/quantization/ptq.py; both with
empirical bias correction unless ``--no-bias-correction``), evaluates
again and prints float vs quantized top-1. ``--out`` saves the quantized
checkpoint, which tools/test.py evaluates like any other. Stem conv, BN and
classifier stay float. A model with QATAdderConv2d layers (a QAT config
and its checkpoint) is converted on the grids it was trained on (``shared``,
its bits). ``--method torch-ao`` applies PyTorch's own INT8
post-training quantization (x86 engine) to a CNN's backbone instead: the
reference point for the CNN twins (nothing is saved).
"""
import argparse
import os.path as osp

from adder_mm.apis import (
    ToolError,
    bare_model,
    build_runner,
    cfg_options_action,
    check_checkpoint,
    check_config_path,
    check_out_path,
    run_tool,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Quantize a trained AdderNet (post-training, or after '
        'quantization-aware training)')
    parser.add_argument('config', help='the config the model was trained with')
    parser.add_argument('checkpoint', help='float (or QAT) checkpoint')
    parser.add_argument('--bits', type=int, default=None,
                        choices=range(2, 9), metavar='{2..8}',
                        help='bits of weights and inputs (default: those the '
                        "model's QAT layers were built for, else 8)")
    parser.add_argument('--method', default='shared',
                        choices=['shared', 'grouped', 'torch-ao'],
                        help='shared: one grid per layer; grouped: one grid '
                        'per group of output channels with exact weight '
                        "clamping; torch-ao: PyTorch's INT8 quantization of "
                        'a CNN backbone, evaluated only (no --out)')
    parser.add_argument('--groups', type=int, default=4,
                        help='output-channel groups per layer (grouped)')
    parser.add_argument('--act-percentile', type=float, default=99.99,
                        help='input clamp percentile (grouped)')
    parser.add_argument('--calib-batches', type=int, default=8,
                        help='training batches to calibrate on')
    parser.add_argument('--no-bias-correction', dest='bias_correction',
                        action='store_false',
                        help='do not fold each channel\'s mean quantization '
                        'error into its bias')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the calibration batches\' order')
    parser.add_argument('--out', help='save the quantized checkpoint here')
    parser.add_argument('--work-dir', help='logs (default work_dirs/'
                        '<config>_quant)')
    parser.add_argument('--cfg-options', nargs='+',
                        action=cfg_options_action(),
                        help='override config entries, key=value')
    args = parser.parse_args(argv)
    check_config_path(parser, args.config)
    check_out_path(parser, args.out)
    if args.calib_batches < 1:
        parser.error('--calib-batches must be >= 1')
    if args.groups < 1:
        parser.error('--groups must be >= 1')
    if not 50 < args.act_percentile <= 100:
        parser.error('--act-percentile must be in (50, 100]')
    if args.method == 'torch-ao' and args.bits not in (None, 8):
        parser.error("--method torch-ao is PyTorch's INT8 quantization: "
                     '--bits 8')
    if args.method == 'torch-ao' and args.out:
        parser.error('--method torch-ao evaluates only (its packed weights '
                     'do not load with the safe loader); drop --out')
    return args


# Keys only the command line sets: refused in --cfg-options.
OWNED = {'launcher': 'nothing: quantize.py runs one process',
         'load_from': 'the CHECKPOINT argument', 'work_dir': '--work-dir'}


def merge_args(cfg, args):
    cfg.launcher = 'none'
    cfg.work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0] + '_quant')
    cfg.load_from = args.checkpoint
    return cfg


def top1(metrics):
    for key, value in metrics.items():
        if key.endswith('top1'):
            return value
    return None


def main(argv=None):
    args = parse_args(argv)
    # A bad file stops the tool before anything is built.
    check = dict(strict=True, quantized='refuse')
    runner, ckpt = build_runner(args, merge_args,
                                ('train_dataloader', 'test_dataloader'),
                                checkpoint=args.checkpoint, check=check,
                                owned=OWNED)
    model = bare_model(runner)
    check_checkpoint(args.checkpoint, model, config=args.config, ckpt=ckpt,
                     **check)
    from adder_mm.quantization import (
        CalibrationError,
        conversion_bits,
        quantize_model,
    )
    from adder_mm.quantization.runner import (
        calibration_loader,
        save_quantized,
        torch_ao_quantize_backbone,
    )

    if args.method != 'torch-ao':
        # Flags the checkpoint's QAT layers refuse stop here, before the
        # evaluation (test() keeps what this loaded).
        runner.load_or_resume()
        try:
            conversion_bits(model, args.bits, args.method)
        except CalibrationError as e:
            raise ToolError(str(e)) from None
    float_metrics = runner.test()
    try:
        loader = calibration_loader(runner.cfg, seed=args.seed)
        if args.method == 'torch-ao':
            spec = torch_ao_quantize_backbone(model, loader,
                                              args.calib_batches)
        else:
            spec = quantize_model(
                model, loader, num_batches=args.calib_batches, bits=args.bits,
                method=args.method, num_groups=args.groups,
                act_percentile=args.act_percentile,
                bias_correction=args.bias_correction)
    except CalibrationError as e:
        raise ToolError(str(e)) from None
    quant_metrics = runner.test()
    if args.out:
        save_quantized(model, spec, args.out, extra_meta=dict(
            float_checkpoint=args.checkpoint, config=args.config,
            float_metrics=float_metrics, quant_metrics=quant_metrics))
    f, q = top1(float_metrics), top1(quant_metrics)
    bc = '' if spec.get('bias_correction', True) else ', no bias correction'
    if spec.get('qat_layers'):
        bc += f', {spec["qat_layers"]} layers on their QAT grids'
    before = 'QAT' if spec.get('qat_layers') else 'float'
    scores = (f'top-1 {before} {f:.2f}, quantized {q:.2f} ({q - f:+.2f})'
              if f is not None and q is not None else
              f'{before} {float_metrics}, quantized {quant_metrics}')
    runner.logger.info(
        f'quantized {args.config} ({spec["method"]}{bc}, {spec["bits"]}-bit, '
        f'{spec["calib_batches"]} calibration batches): {scores}' +
        (f'; saved {args.out}' if args.out else
         ' (not saved: pass --out FILE to keep it)'
         if args.method != 'torch-ao' else ''))
    if f is not None and q is not None and q < f / 2:
        runner.logger.warning(
            f'the quantized model lost more than half its top-1 ({f:.2f} -> '
            f'{q:.2f})' + (': try --method grouped, more bits, or '
                           "quantization-aware training (conv_cfg type "
                           "'QATAdder', e.g. configs/"
                           'adder_r20_digits_int4_qat.py)'
                           if args.method == 'shared' and
                           not spec.get('qat_layers') else ''))
    return float_metrics, quant_metrics, spec


if __name__ == '__main__':
    run_tool(main, prog=osp.basename(__file__))
