"""What the Q-Former reads: the ``modalities`` setting of ``QFormerNeck``, checked and resolved.

One place owns the option names, their defaults and which BEV-encoder output each modality
reads, so the neck (building layers) and the detector (checking the encoder can produce
them) cannot disagree.
"""
from collections.abc import Mapping

#: memory order of the modalities, whatever order the config lists them in
MODALITIES = ('image', 'bev', 'lidar')
#: ``bev.source`` → ``BEVFusionEncoder.encode`` key: the map the map head reads, or the
#: camera branch's map before fusion with LiDAR
BEV_SOURCES = {'output': 'bev', 'camera': 'camera_bev'}
OPTIONS = {
    'image': dict(in_channels=None, downsample=1, pool_size=None, num_cams=6, pc_range=None),
    'bev': dict(in_channels=None, downsample=1, mode='avg', source='output'),
    'lidar': dict(in_channels=None, downsample=1, mode='avg'),
}
DOWNSAMPLE_MODES = ('avg', 'conv')


def _entry(name: str, value) -> dict | None:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f'neck.modalities.{name} must be True/False/None or a dict of '
                        f'{sorted(OPTIONS[name])}, got {value!r}')
    unknown = sorted(set(value) - set(OPTIONS[name]))
    if unknown:
        raise ValueError(f'neck.modalities.{name}: unknown option(s) {unknown}; '
                         f'known: {sorted(OPTIONS[name])}')
    return dict(value)


def resolve_modalities(modalities: Mapping | None, bev_defaults: Mapping) -> dict[str, dict]:
    """``{name: options}`` of the switched-on modalities, in memory order, with defaults.

    ``None`` means today's neck: the BEV map only. ``bev_defaults`` (the neck's top-level
    ``in_channels`` / ``downsample`` / ``downsample_mode``) fill the ``bev`` entry, so a
    child config that only adds ``modalities`` keeps its base's BEV settings.
    """
    if modalities is None:
        modalities = dict(bev=True)
    if not isinstance(modalities, Mapping):
        raise TypeError(f'neck.modalities must be a dict, got {modalities!r}')
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f'neck.modalities: unknown modality {unknown}; known: '
                         f'{list(MODALITIES)}')
    resolved = {}
    for name in MODALITIES:
        entry = _entry(name, modalities.get(name))
        if entry is None:
            continue
        defaults = dict(OPTIONS[name])
        if name == 'bev':
            defaults.update({k: v for k, v in bev_defaults.items() if v is not None})
        resolved[name] = {**defaults, **entry}
    if not resolved:
        raise ValueError('neck.modalities switches every modality off; the Q-Former needs at '
                         f'least one of {list(MODALITIES)}')
    for name, opts in resolved.items():
        _check_options(name, opts)
    return resolved


def _check_options(name: str, opts: dict) -> None:
    if int(opts['downsample']) < 1:
        raise ValueError(f'neck.modalities.{name}.downsample must be >= 1, '
                         f'got {opts["downsample"]}')
    if opts.get('mode', 'avg') not in DOWNSAMPLE_MODES:
        raise ValueError(f'neck.modalities.{name}.mode must be one of {DOWNSAMPLE_MODES}, '
                         f'got {opts["mode"]!r}')
    if name == 'bev' and opts['source'] not in BEV_SOURCES:
        raise ValueError(f'neck.modalities.bev.source must be one of {sorted(BEV_SOURCES)}, '
                         f'got {opts["source"]!r}')
    if name == 'image' and opts['pool_size'] is not None:
        if len(opts['pool_size']) != 2 or min(opts['pool_size']) < 1:
            raise ValueError('neck.modalities.image.pool_size must be (rows, cols) >= 1, '
                             f'got {opts["pool_size"]!r}')
        if opts['downsample'] != 1:
            raise ValueError('neck.modalities.image: set downsample or pool_size, not both')


def encoder_output(name: str, opts: Mapping) -> str:
    """The ``BEVFusionEncoder.encode`` key modality ``name`` reads."""
    if name == 'image':
        return 'img_feats'
    if name == 'lidar':
        return 'lidar_bev'
    return BEV_SOURCES[opts.get('source', 'output')]
