"""Speed and memory of a MapLLaVA model on fake batches of the real input shapes.

    python tools/benchmark.py CONFIG --mode train|infer [--batch-size N] [--iters N]
        [--warmup N] [--random-weights] [--bypass] [--amp] [--compile [MODULE ...]]
        [--channels-last] [--device cuda|cpu] [--img-size H W] [--cfg-options k=v ...]
        [--out result.json]

The batch (utils/benchmark_inputs.py) is six cameras at the config's image size (the
``MultiViewResize`` of its pipeline, a ``benchmark = dict(img_size=(H, W))`` or
``img_size = (H, W)`` hint, or ``--img-size``) with nuScenes-like calibration and, in train
mode, random GT in the data contract's format. The same batch is reused every iteration, so
no data loading is measured.

* train: ``model.train_step`` (data preprocessor, ``loss``, backward, optimizer step) with the
  optim wrapper of the config (AdamW 1e-4 when it has none); ``--amp`` makes it mmengine's
  ``AmpOptimWrapper`` with bf16 (CUDA only).
* infer: ``model.test_step`` under ``torch.no_grad()`` (batch 1 unless ``--batch-size``): from
  uint8 images to polylines, post-processing included. ``--amp``: bf16 autocast.

Reported: ms/iter (host clock, synchronised every iteration on CUDA), samples/s (= FPS in
infer), peak memory (``torch.cuda.max_memory_allocated`` on CUDA, peak process RSS on CPU)
and the per-iteration time of the data preprocessor, BEV encoder, Q-Former neck, bridge (LLM)
and map head, from forward hooks (CUDA events / ``perf_counter``). ``other_forward`` is the
rest of the forward (the loss and the matching in train mode, detector glue).
``backward_and_step`` (train) is what follows the forward: backward through every module,
gradient clipping and the optimizer step, one total (hooks do not see backward per module).

``--random-weights`` needs no checkpoint: the bridge's ``llm_path`` becomes a Vicuna-7B-shaped
``llm_cfg`` built directly on the device in the bridge's dtype and the neck's BLIP-2
``pretrained`` becomes the BLIP-2 Q-Former shape. ``init_weights`` is never called, so no
``init_cfg`` checkpoint (the backbone's ``Pretrained``) is fetched either: the tool runs offline.
Without a local tokenizer folder the prompt is cut so that its byte-level ids are as many as
the Llama tokenizer would give (about 4 bytes per token of English text).

``--compile`` wraps the ``forward`` of the named modules (default: all four parts) with
``torch.compile(mode='reduce-overhead')`` in infer mode: CUDA graphs on a GPU, plain inductor
on the CPU. The warm-up runs on the batch's calibration only; the timed iterations then
alternate it with another one (``with_crop_shift``) under dynamo's ``error_on_recompile``, so
a run that finishes shows that a new rig does not recompile the model.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import platform
import resource
import statistics
import sys
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # custom_imports of projects.MapLLaVA work from any cwd
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from mmdet3d.registry import MODELS  # noqa: E402
from mmdet3d.utils import register_all_modules  # noqa: E402
from mmengine.config import Config, ConfigDict, DictAction  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.config_checks import (  # noqa: E402
    ConfigCheckError,
    validate_cfg_options,
)
from projects.MapLLaVA.mapllava.utils.benchmark_inputs import (  # noqa: E402
    ORI_HW,
    make_batch,
    with_crop_shift,
)
from projects.MapLLaVA.mapllava.utils.module_timer import ModuleTimer  # noqa: E402

# lmsys/vicuna-7b-v1.5 (= Llama-2-7B) shape
VICUNA_7B = dict(model_type='llama', hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 hidden_act='silu', bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
# the Q-Former of Salesforce/blip2-opt-2.7b
BLIP2_QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, encoder_hidden_size=1408,
                     cross_attention_frequency=2)
BLIP2_QUERY_TOKENS = 32
BYTES_PER_LLAMA_TOKEN = 4
PARTS = ('bev_encoder', 'neck', 'bridge', 'map_head')
DEFAULT_COMPILE = PARTS
DEFAULT_OPTIM_WRAPPER = dict(type='OptimWrapper',
                             optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Time a MapLLaVA model on fake batches')
    parser.add_argument('config', help='config file (a model config is enough)')
    parser.add_argument('--mode', choices=['train', 'infer'], required=True)
    parser.add_argument('--batch-size', type=int, help='default: 4 (train), 1 (infer)')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--random-weights', action='store_true',
                        help='Vicuna-7B / BLIP-2 Q-Former shapes with random weights instead '
                        'of llm_path / pretrained (offline)')
    parser.add_argument('--bypass', action='store_true',
                        help='replace the bridge by a BypassBridge (no LLM) of the same '
                        'in/out shapes, for the LLM-cost ratio')
    parser.add_argument('--amp', action='store_true', help='bf16 mixed precision')
    parser.add_argument('--compile', nargs='*', metavar='MODULE', choices=PARTS,
                        help='infer mode: torch.compile(mode="reduce-overhead") the forward '
                        f'of these modules (no names: {" ".join(DEFAULT_COMPILE)})')
    parser.add_argument('--channels-last', action='store_true',
                        help='image backbone and neck in channels-last memory format')
    parser.add_argument('--device', choices=['cuda', 'cpu'],
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size after resizing (default: from the config)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, key=value (as tools/train.py)')
    parser.add_argument('--out', help='write the results as JSON here')
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 4 if args.mode == 'train' else 1
    if args.compile is not None:
        if args.mode != 'infer':
            parser.error('--compile applies to --mode infer only')
        args.compile = list(args.compile or DEFAULT_COMPILE)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error('need --iters >= 1, --warmup >= 0, --batch-size >= 1')
    return args


def _resize_of(pipeline) -> tuple[int, int] | None:
    for step in pipeline or ():
        if step.get('type') != 'MultiViewResize':
            continue
        if step.get('scale') is not None:
            width, height = step['scale']
            return int(height), int(width)
        factor = step['scale_factor']
        return int(ORI_HW[0] * factor + 0.5), int(ORI_HW[1] * factor + 0.5)
    return None


def find_img_size(cfg: Config, mode: str, override) -> tuple[tuple[int, int], str]:
    """(H, W) of the resized images and where it came from."""
    if override:
        return tuple(override), '--img-size'
    hint = cfg.get('benchmark', {}).get('img_size') or cfg.get('img_size')
    if hint:
        return tuple(int(v) for v in hint), 'config hint'
    splits = ('train', 'test', 'val') if mode == 'train' else ('test', 'val', 'train')
    for split in splits:
        loader = cfg.get(f'{split}_dataloader') or {}
        dataset = loader.get('dataset', {})
        for pipeline in (dataset.get('pipeline'), dataset.get('dataset', {}).get('pipeline'),
                         cfg.get(f'{split}_pipeline')):
            size = _resize_of(pipeline)
            if size is not None:
                return size, f'{split} pipeline MultiViewResize'
    raise ConfigCheckError('the config names no image size (no MultiViewResize in its '
                           'pipelines, no benchmark.img_size / img_size): pass --img-size H W')


def use_random_weights(model_cfg: ConfigDict) -> list[str]:
    """Swap checkpoints for same-shape random weights (in place); return what changed."""
    notes = []
    neck, bridge = model_cfg.get('neck', {}), model_cfg.get('bridge', {})
    if neck.get('pretrained'):
        notes.append(f'neck: BLIP-2 Q-Former shape instead of {neck.pretrained}')
        neck.qformer_cfg = {**BLIP2_QFORMER, **(neck.get('qformer_cfg') or {})}
        neck.num_query_tokens = neck.get('num_query_tokens') or BLIP2_QUERY_TOKENS
        neck.pretrained = None
    if bridge.get('llm_path'):
        notes.append(f'bridge: Vicuna-7B shape instead of {bridge.llm_path}')
        tokenizer = bridge.get('tokenizer_path') or bridge.llm_path
        bridge.llm_path, bridge.llm_cfg = None, dict(VICUNA_7B)
        if osp.isdir(tokenizer):
            bridge.tokenizer_path = tokenizer
            notes.append(f'prompt tokenized by {tokenizer}')
        else:
            from projects.MapLLaVA.mapllava.models.llm.llm_bridge import DEFAULT_PROMPT
            prompt = bridge.get('prompt', DEFAULT_PROMPT).encode('utf-8')
            bridge.prompt = prompt[:len(prompt) // BYTES_PER_LLAMA_TOKEN].decode(
                'utf-8', errors='ignore')
            bridge.tokenizer_path = None
            notes.append('prompt length estimated (no local tokenizer): '
                         f'{BYTES_PER_LLAMA_TOKEN} bytes per Llama token')
    return notes


def use_bypass(model_cfg: ConfigDict) -> None:
    """Replace the bridge by a ``BypassBridge`` (its defaults) of the same in/out shapes."""
    bridge = model_cfg.bridge
    model_cfg.bridge = dict(type='BypassBridge', in_channels=bridge.in_channels,
                            embed_dims=bridge.get('embed_dims', 256),
                            num_map_queries=bridge.get('num_map_queries', 50))


def load_config(args) -> tuple[Config, list[str]]:
    """The config with ``--cfg-options`` and the model changes the flags ask for."""
    if not osp.isfile(args.config):
        raise ConfigCheckError(f'config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(validate_cfg_options(cfg, args.cfg_options))
    notes = use_random_weights(cfg.model) if args.random_weights else []
    if args.bypass:
        use_bypass(cfg.model)
    if args.channels_last:
        cfg.model.bev_encoder.channels_last = True
    return cfg, notes


def build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """Build on ``device`` directly (a 7B LLM is never materialised on the CPU first).

    ``init_weights`` is not called: weight values do not change the speed, and so no
    ``init_cfg`` checkpoint (e.g. torchvision's ResNet-50) is fetched.
    """
    register_all_modules(init_default_scope=True)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    with device:
        model = MODELS.build(cfg.model)
    return model.to(device)


def compile_parts(model: torch.nn.Module, names, **compile_kwargs) -> None:
    """``torch.compile`` the ``forward`` of the named child modules in place (their forward
    hooks, e.g. the timer's, stay outside the compiled code)."""
    for name in names:
        module = getattr(model, name)
        module.forward = torch.compile(module.forward, **compile_kwargs)


def make_step(model, cfg: Config, args, batch: dict):
    """One iteration as a callable (on ``batch`` unless given another), the model set to
    train / eval mode."""
    device_type = torch.device(args.device).type
    if args.mode == 'train':
        optim_cfg = ConfigDict(cfg.get('optim_wrapper') or DEFAULT_OPTIM_WRAPPER)
        if args.amp:
            if device_type != 'cuda':
                raise ConfigCheckError('--amp in train mode needs CUDA (AmpOptimWrapper)')
            optim_cfg.type, optim_cfg.dtype = 'AmpOptimWrapper', 'bfloat16'
        elif optim_cfg.get('type') == 'AmpOptimWrapper':
            # the full-size configs default to bf16 AMP; without --amp time the fp32 step
            # (mmengine builds AmpOptimWrapper on accelerators only)
            optim_cfg.type = 'OptimWrapper'
            optim_cfg.pop('dtype', None)
            optim_cfg.pop('loss_scale', None)
        optim_wrapper = build_optim_wrapper(model, optim_cfg)
        model.train()
        return lambda data=batch: model.train_step(data, optim_wrapper)

    model.eval()
    compile_parts(model, args.compile or (), mode='reduce-overhead')

    def infer(data=batch):
        if args.compile and device_type == 'cuda':
            torch.compiler.cudagraph_mark_step_begin()
        amp = torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.amp)
        with torch.no_grad(), amp:
            return model.test_step(data)
    return infer


def _count(params) -> float:
    return round(sum(p.numel() for p in params) / 1e6, 3)


def _bridge_tokens(model) -> dict | None:
    bridge = model.bridge
    if not hasattr(bridge, 'prompt_ids'):
        return None
    scene = getattr(model.neck, 'num_query_tokens', None)
    return dict(prompt=int(bridge.prompt_ids.numel()), scene=scene,
                map_queries=bridge.num_map_queries)


#: points of one nuScenes LIDAR_TOP sweep (about 34k)
LIDAR_POINTS = 34000


def run(args) -> dict:
    cfg, notes = load_config(args)
    img_hw, img_hw_source = find_img_size(cfg, args.mode, args.img_size)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    torch.manual_seed(args.seed)
    model = build_model(cfg, device)
    head = cfg.model.map_head
    # a LiDAR branch (voxels) or LiDAR depth supervision needs a point cloud per sample
    depth_loss = cfg.model.bev_encoder.get('view_transform', {}).get('depth_loss_weight', 0)
    needs_points = bool(cfg.model.data_preprocessor.get('voxel')) or (
        args.mode == 'train' and depth_loss > 0)
    batch = make_batch(args.batch_size, img_hw, num_classes=head.get('num_classes', 3),
                       num_pts=head.get('num_pts', 20), with_gt=args.mode == 'train',
                       seed=args.seed, num_lidar_points=LIDAR_POINTS if needs_points else 0)
    step = make_step(model, cfg, args, batch)
    # compiled: timed iterations alternate two calibrations, recompiling is an error
    batches = [batch, with_crop_shift(batch)] if args.compile else [batch]
    modules = {'data_preprocessor': model.data_preprocessor, 'forward': model}
    modules.update({name: getattr(model, name) for name in PARTS})
    timer = ModuleTimer(modules, cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    for _ in range(args.warmup):
        step()
    sync()
    timer.reset()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch._dynamo.config.patch(error_on_recompile=bool(args.compile)):
        for i in range(args.iters):
            start = time.perf_counter()
            with timer.span('iteration'):
                step(batches[i % len(batches)])
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    totals = {k: v / args.iters for k, v in timer.totals_ms().items()}
    timer.remove()

    stages = {k: totals.get(k, 0.0) for k in ('data_preprocessor',) + PARTS}
    stages['other_forward'] = totals['forward'] - sum(totals.get(k, 0.0) for k in PARTS)
    rest = 'backward_and_step' if args.mode == 'train' else 'other'
    stages[rest] = totals['iteration'] - totals['data_preprocessor'] - totals['forward']
    ms_per_iter = statistics.fmean(times)
    if cuda:
        peak_mb, peak_kind = torch.cuda.max_memory_allocated() / 2**20, \
            'torch.cuda.max_memory_allocated (timed iterations)'
        device_name = torch.cuda.get_device_name(device)
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_kind = 'peak process RSS (CPU, whole run incl. model build)'
        device_name = f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores'
    samples_per_s = args.batch_size * 1e3 / ms_per_iter
    result = dict(
        config=args.config, mode=args.mode, device=args.device, device_name=device_name,
        batch_size=args.batch_size, iters=args.iters, warmup=args.warmup,
        num_cams=len(batch['inputs']['img'][0]), img_size=list(img_hw),
        img_size_source=img_hw_source, bridge=type(model.bridge).__name__,
        random_weights=args.random_weights, amp=args.amp, compile=args.compile,
        channels_last=args.channels_last, cfg_options=args.cfg_options,
        recompile_check=('timed iterations alternate 2 calibrations under '
                         'torch._dynamo error_on_recompile' if args.compile else None),
        ms_per_iter=round(ms_per_iter, 3), ms_per_iter_median=round(statistics.median(times), 3),
        samples_per_s=round(samples_per_s, 3),
        peak_memory_mb=round(peak_mb, 1), peak_memory_kind=peak_kind,
        stage_ms={k: round(v, 3) for k, v in stages.items()},
        stage_share={k: round(v / totals['iteration'], 4) for k, v in stages.items()},
        stage_timing='cuda events' if cuda else 'perf_counter',
        bridge_tokens=_bridge_tokens(model),
        params_m=dict(total=_count(model.parameters()),
                      trainable=_count(p for p in model.parameters() if p.requires_grad)),
        notes=notes,
        torch=torch.__version__, threads=torch.get_num_threads(),
        date=datetime.date.today().isoformat())
    if args.mode == 'infer':
        result['fps'] = result['samples_per_s']
    return result


def report(result: dict) -> str:
    rate = 'FPS' if result['mode'] == 'infer' else 'samples/s'
    lines = [f"{result['config']} [{result['mode']}, {result['bridge']}] on "
             f"{result['device_name']}: batch {result['batch_size']} x {result['num_cams']} x "
             f"{result['img_size'][0]}x{result['img_size'][1]}",
             f"  {result['ms_per_iter']:.1f} ms/iter (median {result['ms_per_iter_median']:.1f})"
             f", {result['samples_per_s']:.2f} {rate}",
             f"  peak memory {result['peak_memory_mb']:.0f} MB ({result['peak_memory_kind']})",
             f"  per iteration ({result['stage_timing']}):"]
    for name, ms in result['stage_ms'].items():
        lines.append(f"    {name:<18} {ms:9.2f} ms  {100 * result['stage_share'][name]:5.1f} %")
    return '\n'.join(lines + [f'  note: {n}' for n in result['notes']])


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    cli.run_cli(main)
