"""Check that a config can train here before spending GPU hours on it.

    python tools/preflight.py CONFIG [--work-dir DIR] [--decode-images] [--workers N]
        [--cfg-options k=v ...]

One ``PASS``/``FAIL`` line per item; exit status 1 if anything failed (2 for a config
that cannot even be read). Items:

* ``config``: the file loads, ``custom_imports`` import, ``--cfg-options`` keys exist, and
  the keys of the runtime dicts (``train_cfg``, ``env_cfg``, ``default_hooks.<name>`` ...)
  are ones their consumer reads, in the file and in the overrides;
* ``registry``: every ``type=`` of the model, datasets, pipelines, evaluators, hooks,
  optimizer, schedulers, loops and visualizer resolves in mmdet3d's registries;
* ``data_root`` / ``version``: the dataroot exists with the ``v1.0-*`` folder the infos name;
* ``infos``: each ``ann_file`` exists, loads, has a non-empty ``data_list`` whose entries
  carry ``map_annos``;
* ``files``: every file the dataloaders' pipelines will read (camera images, LiDAR points)
  exists; an image's header decodes and it ends with its end-of-image marker (full decode
  with ``--decode-images``), a point file holds whole points (threads: ``--workers``);
* ``pretrained``: LLM / tokenizer / BLIP-2 references resolve offline (a folder with
  ``config.json`` or a hub id already in the local HF cache); ``init_cfg`` ``Pretrained``
  checkpoints exist (files) or are cached / downloadable (URLs, ``torchvision://``);
* ``gpu``: a config that needs a GPU (``preflight.requires_gpu``, or by default any config
  loading a pretrained LLM) fails without one; CPU-sized configs pass on CPU. With a GPU,
  free memory is compared to ``preflight.gpu_mem_gb`` (fixed) +
  ``preflight.gpu_mem_gb_per_sample`` x batch size when the config states them;
* ``disk``: free space where the work dir lives >= ``preflight.min_free_disk_gb``
  (default 20 GB for GPU configs, 1 GB otherwise).
"""
import argparse
import functools
import os
import os.path as osp
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import DictAction  # noqa: E402
from tqdm import tqdm  # noqa: E402

from projects.MapLLaVA.mapllava.datasets.sample_files import (  # noqa: E402
    check_file,
    pipeline_reads,
    sample_files,
)
from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.config_checks import (  # noqa: E402
    _leaf_datasets,
    ann_files,
    pretrained_refs,
    resolve_pretrained,
)
from projects.MapLLaVA.mapllava.utils.safe_pickle import (  # noqa: E402
    UnsafePickleError,
    load_data_file,
)

GB = 1024 ** 3
MAX_LISTED_FILES = 10


class Report:
    """Collects and prints PASS/FAIL lines."""

    def __init__(self) -> None:
        self.failed = []

    def add(self, ok: bool, item: str, detail: str) -> None:
        print(f'{"PASS" if ok else "FAIL"}  {item:<11} {detail}', flush=True)
        if not ok:
            self.failed.append(item)


def _registry_sections(cfg) -> list:
    """``(config subtree, where, registries that may hold its types)``."""
    from mmdet3d import registry as r
    sections = [(cfg.get('model'), 'model', (r.MODELS, r.TASK_UTILS, r.WEIGHT_INITIALIZERS)),
                (cfg.get('optim_wrapper'), 'optim_wrapper', (r.OPTIM_WRAPPERS, r.OPTIMIZERS)),
                (cfg.get('param_scheduler'), 'param_scheduler', (r.PARAM_SCHEDULERS,)),
                (cfg.get('default_hooks'), 'default_hooks', (r.HOOKS,)),
                (cfg.get('custom_hooks'), 'custom_hooks', (r.HOOKS,)),
                (cfg.get('visualizer'), 'visualizer', (r.VISUALIZERS, r.VISBACKENDS))]
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader') or {}
        sections += [(loader.get('dataset'), f'{split}_dataloader.dataset',
                      (r.DATASETS, r.TRANSFORMS)),
                     (loader.get('sampler'), f'{split}_dataloader.sampler',
                      (r.DATA_SAMPLERS,)),
                     (cfg.get(f'{split}_evaluator'), f'{split}_evaluator',
                      (r.METRICS, r.EVALUATOR)),
                     (cfg.get(f'{split}_cfg'), f'{split}_cfg', (r.LOOPS,))]
    return sections


def _types(node, where: str):
    """``(where, type name)`` for every string ``type`` in a config subtree."""
    if isinstance(node, dict):
        if isinstance(node.get('type'), str):
            yield where, node['type']
        for key, value in node.items():
            yield from _types(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _types(value, f'{where}.{i}')


def check_registry(cfg, report: Report) -> None:
    from mmdet3d.registry import RUNNERS
    from mmengine.registry import DefaultScope
    if not DefaultScope.check_instance_created('preflight'):
        DefaultScope.get_instance('preflight', scope_name=cfg.get('default_scope', 'mmdet3d'))
    missing, count = {}, 0  # type name -> first place it is used
    for node, where, registries in _registry_sections(cfg):
        for path, name in _types(node, where):
            count += 1
            if not any(reg.get(name) for reg in registries):
                missing.setdefault(name, path)
    runner_type = cfg.get('runner_type', 'MapRunner')
    if isinstance(runner_type, str) and RUNNERS.get(runner_type) is None:
        missing.setdefault(runner_type, 'runner_type')
    report.add(not missing, 'registry',
               f'{count} types resolve' if not missing else f'{len(missing)} not registered: '
               + ', '.join(f'{name} ({path})' for name, path in missing.items()))


def _load_info(path: str) -> tuple:
    infos = load_data_file(path)  # a .pkl may hold only builtins and numpy arrays
    data = infos.get('data_list', []) if isinstance(infos, dict) else []
    meta = infos.get('metainfo', {}) if isinstance(infos, dict) else {}
    return data, meta


def check_data(cfg, report: Report) -> None:
    roots = {path: root for _, root, path in ann_files(cfg, ('train', 'val', 'test'))}
    if not roots:
        report.add(True, 'infos', 'no ann_file in the dataloaders (nothing to check)')
        return
    for root in sorted({r for r in roots.values() if r}):
        report.add(osp.isdir(root), 'data_root', f'{root} '
                   + ('present' if osp.isdir(root) else 'does not exist'))
    versions = set()
    for path, root in sorted(roots.items()):
        if not osp.isfile(path):
            report.add(False, 'infos', f'{path} missing (run tools/create_data.py)')
            continue
        try:
            data, meta = _load_info(path)
        except UnsafePickleError as exc:  # names the file and the global
            report.add(False, 'infos', str(exc))
            continue
        except Exception as exc:  # unreadable pickle of any kind
            report.add(False, 'infos', f'{path} cannot be read: {exc}')
            continue
        with_maps = sum(1 for d in data if isinstance(d, dict) and 'map_annos' in d)
        report.add(bool(data) and with_maps == len(data), 'infos',
                   f'{path}: {len(data)} samples, {with_maps} with map_annos')
        if root and meta.get('version'):
            versions.add(osp.join(root, meta['version']))
    for folder in sorted(versions):
        report.add(osp.isdir(folder), 'version',
                   f'{folder} ' + ('present' if osp.isdir(folder) else 'missing'))


def _file_datasets(cfg) -> list:
    """``(where, dataset config, reads)`` of each distinct dataset whose pipeline reads files."""
    seen, found = set(), []
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        for ds in _leaf_datasets(loader.get('dataset') if isinstance(loader, dict) else None):
            reads = pipeline_reads(ds.get('pipeline'))
            key = repr([ds.get(k) for k in ('type', 'data_root', 'ann_file', 'data_prefix')]
                       + sorted(reads))
            if reads and key not in seen:
                seen.add(key)
                found.append((f'{split}_dataloader.dataset', ds, reads))
    return found


def _check_samples(jobs: list, reads: dict, decode: bool, workers: int, desc: str) -> list:
    """``(token, path, problem)`` over ``jobs`` = ``[(token, [(kind, path)])]``, in threads
    (the time goes into opening files), with a progress bar on stderr."""
    def check(job):
        token, files = job
        return [(token, path, why) for kind, path in files
                for why in [check_file(kind, path, reads[kind], decode)] if why]
    problems = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(jobs), desc=desc, unit='sample',
                                                   file=sys.stderr, mininterval=0.5) as bar:
        for found in pool.map(check, jobs):
            problems += found
            bar.update()
    return problems


def check_files(cfg, report: Report, decode: bool = False, workers: int = 8) -> None:
    """Every file the pipelines will read, so that a bad one fails here and not mid-epoch."""
    datasets = _file_datasets(cfg)
    if not datasets:
        report.add(True, 'files', 'no pipeline step reads sample files')
        return
    from mmdet3d.registry import DATASETS
    done = set()  # a file shared by datasets (val = test) is checked once
    for where, ds_cfg, reads in datasets:
        try:  # the dataset itself joins data_root / data_prefix to the info's paths
            dataset = DATASETS.build(dict(ds_cfg, pipeline=[], serialize_data=False))
        except Exception as exc:  # missing or unreadable infos: the infos check says which
            report.add(False, 'files', f'{where}: not built, files not checked ({exc})')
            continue
        jobs = []
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            files = [(kind, path) for kind, path in sample_files(info, reads) if path not in done]
            done.update(path for _, path in files)
            jobs.append((info.get('token', i), files))
        problems = _check_samples(jobs, reads, decode, workers, where.split('.')[0])
        for token, path, why in problems[:MAX_LISTED_FILES]:
            report.add(False, 'files', f'sample {token}: {path}: {why}')
        count = sum(len(files) for _, files in jobs)
        more = len(problems) - MAX_LISTED_FILES
        report.add(not problems, 'files',
                   f'{dataset.ann_file}: {count - len(problems)} of {count} files of '
                   f'{len(jobs)} samples usable ({"/".join(sorted(reads))}, '
                   + ('full decode)' if decode else 'headers and sizes)')
                   + (f'; {more} more bad files not listed' if more > 0 else ''))


def _init_checkpoints(node, where: str = 'model'):
    """``(where, checkpoint)`` of every ``init_cfg=dict(type='Pretrained', checkpoint=...)``
    (or ``'StrictPretrained'``)."""
    if isinstance(node, dict):
        if node.get('type') in ('Pretrained', 'StrictPretrained') and isinstance(
                node.get('checkpoint'), str):
            yield where, node['checkpoint']
        for key, value in node.items():
            yield from _init_checkpoints(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _init_checkpoints(value, f'{where}.{i}')


def _resolve_init_checkpoint(ref: str) -> tuple:
    """``(ok, detail)`` for an mmengine ``Pretrained`` checkpoint: file, URL or torchvision."""
    if ref.startswith('torchvision://'):
        try:
            from mmengine.runner.checkpoint import get_torchvision_models
            url = get_torchvision_models()[ref[len('torchvision://'):]]
        except ImportError:
            return False, f'{ref}: torchvision is not installed'
        except KeyError:
            return False, f'{ref}: no such torchvision model'
        ref = url
    if ref.startswith(('http://', 'https://')):
        import torch
        cached = osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(ref))
        return True, (f'{ref} cached' if osp.isfile(cached)
                      else f'{ref} not cached: downloaded at init (needs internet)')
    return osp.isfile(ref), f'{ref} ' + ('present' if osp.isfile(ref) else 'does not exist')


def check_pretrained(cfg, report: Report) -> None:
    refs = pretrained_refs(cfg.get('model', {}))
    if not refs:
        report.add(True, 'pretrained', 'no LLM/BLIP-2 checkpoints referenced (built from '
                   'configs)')
    for where, ref in refs:
        ok, detail = resolve_pretrained(ref)
        report.add(ok, 'pretrained', f'{where}: {detail}')
    for where, ref in _init_checkpoints(cfg.get('model', {})):
        ok, detail = _resolve_init_checkpoint(ref)
        report.add(ok, 'pretrained', f'{where}: {detail}')


def _needs_gpu(cfg) -> bool:
    flags = cfg.get('preflight') or {}
    if 'requires_gpu' in flags:
        return bool(flags['requires_gpu'])
    return any(where.endswith('llm_path') for where, _ in pretrained_refs(cfg.get('model', {})))


def check_gpu(cfg, report: Report) -> None:
    import torch
    needs = _needs_gpu(cfg)
    if not torch.cuda.is_available():
        report.add(not needs, 'gpu', 'no GPU: CPU training only'
                   + (' (this config needs a GPU)' if needs else ' (enough for this config)'))
        return
    free, total = torch.cuda.mem_get_info()
    flags = cfg.get('preflight') or {}
    batch = (cfg.get('train_dataloader') or {}).get('batch_size', 1)
    if 'gpu_mem_gb' not in flags and 'gpu_mem_gb_per_sample' not in flags:
        report.add(True, 'gpu', f'{torch.cuda.get_device_name()} {free / GB:.1f} GB free '
                   '(no memory figure for this config: set preflight.gpu_mem_gb[_per_sample])')
        return
    need = flags.get('gpu_mem_gb', 0) + flags.get('gpu_mem_gb_per_sample', 0) * batch
    report.add(free / GB >= need, 'gpu', f'{torch.cuda.get_device_name()}: {free / GB:.1f} GB '
               f'free of {total / GB:.1f}, batch {batch} needs ~{need:.1f} GB')


def check_disk(cfg, report: Report) -> None:
    flags = cfg.get('preflight') or {}
    need = flags.get('min_free_disk_gb', 20 if _needs_gpu(cfg) else 1)
    path = osp.abspath(cfg.work_dir)
    while not osp.exists(path):
        path = osp.dirname(path)
    free = shutil.disk_usage(path).free / GB
    writable = os.access(path, os.W_OK)
    report.add(free >= need and writable, 'disk',
               f'{free:.1f} GB free at {path} (need {need} GB)'
               + ('' if writable else ', not writable'))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Check a config before training')
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='where checkpoints will go (disk check)')
    parser.add_argument('--decode-images', action='store_true',
                        help='decode every image in full (slower) instead of its header')
    parser.add_argument('--workers', type=int, default=8, help='threads checking files')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    report = Report()
    try:
        cfg = cli.load_config(args.config, args.cfg_options, 'none', args.work_dir)
    except Exception as exc:  # any failure to read the config is the one finding
        report.add(False, 'config', f'{args.config}: {exc}')
        return 2
    report.add(True, 'config', f'{args.config} loads, custom_imports import')
    files = functools.partial(check_files, decode=args.decode_images, workers=args.workers)
    for check in (check_registry, check_data, files, check_pretrained, check_gpu, check_disk):
        check(cfg, report)
    failed = ', '.join(dict.fromkeys(report.failed))
    print(f'preflight: {"FAILED: " + failed if failed else "all passed"}')
    return 1 if report.failed else 0


if __name__ == '__main__':
    sys.exit(main())
