"""Generate a complete synthetic nuScenes dataset (tables, maps, images, lidar) in one go.

The dataset is written into a temporary sibling of the output folder and renamed into place
only when complete, so an interrupted run never leaves something that looks like a dataset.
A marker file records the arguments; folders without it are never replaced silently.
"""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .capture import FINE_RES, SceneWorld, capture_sample, network, scene_world
from .map_expansion import write_map
from .road_network import LOCATIONS
from .scenes import MAX_SWEEPS, SceneSpec, plan_scenes, scene_names
from .sensor_rig import Sensor, build_rig
from .tables import Annotation, build_tables
from .traffic import DEFAULT_START_SPAN, check_start_span

MARKER = '.synthetic_nuscenes.json'
FORMAT_VERSION = 1
ANNOTATION_RANGE = 60.0   # m from the ego within which objects hit by the lidar are annotated


class OutputFolderError(RuntimeError):
    """The output folder holds something this tool must not replace."""


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate and where. ``scenes=None`` takes the version's default count,
    ``val_scenes=None`` makes ~20 % of them val (``scenes.scene_names``);
    ``start_span``: how far along its first lane the ego may start (``traffic.plan_scene``)."""
    out: str
    version: str = 'v1.0-mini'
    seed: int = 0
    scenes: int | None = None
    samples_per_scene: int = 20
    image_scale: float = 0.25
    sweeps: int = 1
    workers: int = 1
    overwrite: bool = False
    start_span: float = DEFAULT_START_SPAN
    val_scenes: int | None = None

    def content_args(self) -> dict:
        """The arguments that determine the dataset's bytes (recorded in the marker).

        ``start_span`` and ``val_scenes`` appear only when not their defaults, so datasets
        written before they existed (the same bytes) are still recognised as up to date.
        """
        names = scene_names(self.version, self.scenes, self.val_scenes)
        args = dict(format=FORMAT_VERSION, version=self.version, seed=self.seed,
                    scenes=len(names), samples_per_scene=self.samples_per_scene,
                    image_scale=self.image_scale, sweeps=self.sweeps)
        if self.start_span != DEFAULT_START_SPAN:
            args['start_span'] = self.start_span
        if self.val_scenes is not None:
            args['val_scenes'] = self.val_scenes
        return args


def generate(cfg: GeneratorConfig, progress: bool = True) -> str:
    """Generate the dataset described by ``cfg``; return the absolute output folder.

    An existing output of this tool with the same arguments is kept as is (unless
    ``overwrite``); one with other arguments is replaced; any other non-empty folder is refused
    unless ``overwrite``.
    """
    args = _validate(cfg)
    out = os.path.abspath(cfg.out)
    state = _inspect(out, args)
    if state == 'same' and not cfg.overwrite:
        if progress:
            print(f'{out} already holds this synthetic dataset; nothing to do')
        return out
    if state == 'foreign':
        if not cfg.overwrite:
            raise OutputFolderError(
                f'{out} is not empty and was not written by this tool (no {MARKER}); '
                'refusing to replace it. Choose another --out or pass --overwrite.')
        _refuse_dangerous(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.tmp-', dir=parent)
    try:
        os.chmod(tmp, 0o755)
        _write_dataset(cfg, tmp, progress)
        with open(os.path.join(tmp, MARKER), 'w') as f:
            json.dump(args, f, indent=1)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _validate(cfg: GeneratorConfig) -> dict:
    if cfg.samples_per_scene < 1:
        raise ValueError(f'samples_per_scene must be >= 1, got {cfg.samples_per_scene}')
    if cfg.workers < 1:
        raise ValueError(f'workers must be >= 1, got {cfg.workers}')
    if not 0 <= cfg.sweeps <= MAX_SWEEPS:
        raise ValueError(f'sweeps must be in 0..{MAX_SWEEPS}, got {cfg.sweeps}')
    check_start_span(cfg.start_span)
    build_rig(cfg.image_scale)           # validates the scale
    return cfg.content_args()            # validates version and scene count


def _inspect(out: str, args: dict) -> str:
    """'missing', 'empty', 'same' (our output, same args), 'ours' or 'foreign'."""
    if not os.path.lexists(out):
        return 'missing'
    if os.path.isdir(out) and not os.listdir(out):
        return 'empty'
    marker = os.path.join(out, MARKER)
    if os.path.isdir(out) and os.path.isfile(marker):
        try:
            with open(marker) as f:
                return 'same' if json.load(f) == args else 'ours'
        except (OSError, ValueError):
            return 'foreign'
    return 'foreign'


def _refuse_dangerous(out: str) -> None:
    """Even with --overwrite, never replace the filesystem root, a home folder or a folder that
    contains the working directory."""
    real = os.path.realpath(out)
    cwd = os.path.realpath(os.getcwd())
    if real in ('/', os.path.realpath(os.path.expanduser('~'))) or \
            os.path.commonpath([real, cwd]) == real:
        raise OutputFolderError(f'refusing to replace {out}: it is a root, home or working '
                                'folder (or contains the working folder)')


def _swap(tmp: str, out: str) -> None:
    """Move the finished dataset into place, replacing any previous content of ``out``."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out):
        os.rmdir(out)
        os.rename(tmp, out)
        return
    old = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.old-', dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    os.rename(tmp, out)
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old)
    else:
        os.unlink(old)


def _write_dataset(cfg: GeneratorConfig, root: str, progress: bool) -> None:
    rig = build_rig(cfg.image_scale)
    nets = {loc: network(loc, cfg.seed) for loc in LOCATIONS}
    for net in nets.values():
        write_map(net, cfg.seed, root)
    names = scene_names(cfg.version, cfg.scenes, cfg.val_scenes)
    specs = plan_scenes(names, nets, rig, cfg.samples_per_scene, cfg.sweeps, cfg.seed,
                        cfg.start_span)
    counts = _render_all(specs, rig, root, cfg.seed, cfg.workers, progress)
    for spec in specs:
        spec.record.annotations = _annotations(spec, counts)
    tables = build_tables([s.record for s in specs], rig, cfg.seed)
    table_dir = os.path.join(root, cfg.version)
    os.makedirs(table_dir)
    for name, records in tables.items():
        with open(os.path.join(table_dir, f'{name}.json'), 'w') as f:
            f.write(json.dumps(records, indent=0))


def _annotations(spec: SceneSpec, counts: dict) -> list[Annotation]:
    """Boxes of the actors the keyframe lidar saw within range of the ego."""
    out = []
    for k, ts in enumerate(spec.record.key_timestamps):
        t = spec.time_of(ts)
        ego = spec.plan.ego.poses([t])[0]
        for actor_idx, n in sorted(counts[spec.index, k].items()):
            actor = spec.plan.actors[actor_idx]
            centre, yaw = actor.box(t)
            if np.linalg.norm(centre[:2] - ego[:2]) <= ANNOTATION_RANGE:
                out.append(Annotation(actor_idx, k, actor.category, actor.attribute,
                                      tuple(centre), actor.size, yaw, n))
    return out


# ----------------------------------------------------------------------------- rendering

def _render_all(specs: list[SceneSpec], rig: list[Sensor], root: str, seed: int, workers: int,
                progress: bool) -> dict[tuple[int, int], dict[int, int]]:
    """Render every sample, in parallel when asked; return lidar hit counts per sample."""
    tasks = [(s.index, k) for s in specs for k in range(len(s.record.key_timestamps))]
    bar = tqdm(total=len(tasks), desc='rendering samples', unit='sample', disable=not progress)
    counts = {}
    job = _Job(specs, rig, root, seed)
    if workers == 1:
        for task in tasks:
            counts[task] = job(task)
            bar.update()
    else:
        ctx = mp.get_context('fork' if 'fork' in mp.get_all_start_methods() else 'spawn')
        with ctx.Pool(workers, initializer=_set_job, initargs=(job,)) as pool:
            for task, result in zip(tasks, pool.imap(_run_job, tasks)):
                counts[task] = result
                bar.update()
    bar.close()
    return counts


class _Job:
    """Renders one (scene, keyframe) task, keeping the world of the last scene it saw."""

    def __init__(self, specs: list[SceneSpec], rig: list[Sensor], root: str, seed: int):
        self.specs, self.rig, self.root, self.seed = specs, rig, root, seed

    @functools.lru_cache(maxsize=1)
    def world(self, scene: int) -> SceneWorld:
        # Full-size images resolve the 5 cm ground raster near the car: halve it for them.
        fine_res = FINE_RES if self.rig[0].width <= 800 else FINE_RES / 2
        return scene_world(self.specs[scene], self.seed, fine_res)

    def __call__(self, task: tuple[int, int]) -> dict[int, int]:
        scene, k = task
        return capture_sample(self.specs[scene], self.world(scene), k, self.rig, self.root,
                              self.seed)


_WORKER_JOB: _Job | None = None   # the job of a pool worker process


def _set_job(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _run_job(task: tuple[int, int]) -> dict[int, int]:
    return _WORKER_JOB(task)

