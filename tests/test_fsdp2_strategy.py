"""``FSDP2Strategy`` / ``MapFlexibleRunner`` without a second process: the mixed-precision
policies, the sharding units, mixed precision and activation checkpointing on a one-rank gloo
group, the errors, the configs, and the one-process path (sharded checkpoint folders, exact
resume, the consolidated export) on the toy model. The 2-rank runs are in
tests/test_fsdp2_training.py."""
import os.path as osp
import socket

import pytest
import torch
import torch.distributed as dist
from _toy_training import REPO_ROOT, write_toy_config
from mmengine.config import Config
from mmengine.model import BaseModel
from test_training_tools import _tool
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

from projects.MapLLaVA.mapllava.engine import CheckpointMismatchError, FSDP2Strategy
from projects.MapLLaVA.mapllava.engine.config_checks import (
    ConfigCheckError,
    validate_cfg_options,
)
from projects.MapLLaVA.mapllava.engine.fsdp2_strategy import mixed_precision_policies
from projects.MapLLaVA.mapllava.engine.sharded_checkpoint import is_sharded_checkpoint
from projects.MapLLaVA.mapllava.models.llm.llm_bridge import LLMBridge

CONFIGS = osp.join(REPO_ROOT, 'configs', 'mapllava')
FSDP_CONFIGS = {'full': 'mapllava_r50_vicuna7b-full-fsdp_8xb4-3e_nus-map.py',
                'lora': 'mapllava_r50_vicuna7b-lora-fsdp_8xb4-3e_nus-map.py'}
STAGE2_CONFIGS = ['mapllava_r50_vicuna7b-frozen_8xb4-12e_nus-map.py',
                  'mapllava_r50_vicuna7b-frozen_8xb4-24e_nus-map-mini.py']
TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64,
                  max_position_embeddings=64)
train_tool, test_tool, export_tool = _tool('train'), _tool('test'), _tool('export_checkpoint')


class TinyLLMModel(BaseModel):
    """A Llama decoder (2 layers) between two linear layers: the LLM-in-the-middle shape."""

    def __init__(self, gradient_checkpointing: bool = False):
        super().__init__()
        torch.manual_seed(0)
        llm = AutoModelForCausalLM.from_config(AutoConfig.for_model('llama', **TINY_LLAMA))
        if gradient_checkpointing:
            llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={'use_reentrant': False})
        self.proj = nn.Linear(8, 32)
        self.llm = llm.get_decoder()
        self.head = nn.Linear(32, 1)

    def forward(self, inputs, data_samples=None, mode='loss'):
        hidden = self.llm(inputs_embeds=self.proj(inputs)).last_hidden_state
        return dict(loss=self.head(hidden).pow(2).mean())


@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank in this process, removed afterwards."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def _strategy(tmp_path, launcher='pytorch', **kwargs) -> FSDP2Strategy:
    return FSDP2Strategy(work_dir=str(tmp_path), env_kwargs=dict(
        launcher=launcher, randomness=dict(seed=0)), log_kwargs=dict(log_level='WARNING'),
        **kwargs)


def test_mixed_precision_policies():
    layer, root = mixed_precision_policies(dict(param_dtype='bf16', reduce_dtype='fp32'))
    assert layer == MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert root == MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    assert mixed_precision_policies(None) == (MixedPrecisionPolicy(), MixedPrecisionPolicy())
    with pytest.raises(ValueError, match="unknown keys \\['output_dtype'\\]"):
        mixed_precision_policies(dict(output_dtype='bf16'))
    with pytest.raises(ValueError, match="'bfloat16'"):
        mixed_precision_policies(dict(param_dtype='bfloat16'))


@pytest.mark.parametrize('mode', sorted(FSDP_CONFIGS))
def test_stage3_fsdp_configs(mode):
    cfg = Config.fromfile(osp.join(CONFIGS, FSDP_CONFIGS[mode]))
    parent = Config.fromfile(osp.join(CONFIGS, FSDP_CONFIGS[mode].replace('-fsdp', '')))
    assert cfg.runner_type == 'MapFlexibleRunner' and cfg.strategy.type == 'FSDP2Strategy'
    assert cfg.strategy.layer_cls == ['LlamaDecoderLayer']
    assert cfg.strategy.mixed_precision == dict(param_dtype='bf16', reduce_dtype='fp32')
    assert cfg.strategy.activation_checkpointing and not cfg.strategy.cpu_offload
    bridge = cfg.model.bridge
    assert bridge.mode == mode and bridge.dtype == 'bf16'
    assert not bridge.gradient_checkpointing and not bridge.prompt_cache
    # everything else is the DDP config's: learning rates, schedule, start checkpoint
    for key in ('optim_wrapper', 'param_scheduler', 'load_from', 'checkpoint_check',
                'train_cfg', 'train_dataloader'):
        assert cfg[key] == parent[key], key
    layer, _ = mixed_precision_policies(cfg.strategy.mixed_precision)
    assert layer.param_dtype == torch.bfloat16 and layer.reduce_dtype == torch.float32


@pytest.mark.parametrize('name', STAGE2_CONFIGS)
def test_stage2_configs_keep_ddp(name):
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    assert cfg.runner_type == 'MapRunner' and 'strategy' not in cfg


def test_cfg_options_reach_the_strategy():
    cfg = Config.fromfile(osp.join(CONFIGS, FSDP_CONFIGS['full']))
    assert validate_cfg_options(cfg, {'strategy.cpu_offload': True}) == {
        'strategy.cpu_offload': True}
    with pytest.raises(ConfigCheckError, match='has no key'):
        validate_cfg_options(cfg, {'strategy.cpu_ofload': True})


def test_shards_each_layer_then_the_root_in_mixed_precision(tmp_path, one_rank_group):
    strategy = _strategy(tmp_path, layer_cls=['LlamaDecoderLayer'],
                         mixed_precision=dict(param_dtype='bf16', reduce_dtype='fp32'),
                         activation_checkpointing=True)
    model = strategy._wrap_model(TinyLLMModel())
    units = [n for n, m in model.named_modules() if isinstance(m, FSDPModule)]
    assert units == ['', 'llm.layers.0', 'llm.layers.1']
    assert all(isinstance(layer, CheckpointWrapper) for layer in model.llm.layers)
    seen = {}
    layer0 = model.llm.layers[0]._checkpoint_wrapped_module
    layer0.register_forward_hook(
        lambda m, i, o: seen.update(layer=m.self_attn.q_proj.weight.dtype, out=o.dtype))
    model.head.register_forward_hook(lambda m, i, o: seen.update(head=m.weight.dtype))
    loss = model(torch.randn(2, 5, 8))['loss']
    loss.backward()
    # bf16 compute inside the layers, the root's own dtype outside, fp32 sharded masters
    assert seen == dict(layer=torch.bfloat16, out=torch.bfloat16, head=torch.float32)
    for name, param in model.named_parameters():
        assert isinstance(param, DTensor) and param.dtype == torch.float32, name
        if 'embed_tokens' not in name:  # the only one the forward (inputs_embeds) skips
            assert param.grad is not None and param.grad.dtype == torch.float32, name
    # names stay those of the unwrapped model: per-group learning rates still match them
    assert 'llm.layers.0.self_attn.q_proj.weight' in model.state_dict()


class _BridgeRoot(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        torch.manual_seed(0)
        self.bridge = LLMBridge(in_channels=16, embed_dims=8, num_map_queries=4,
                                llm_cfg=dict(model_type='llama', **TINY_LLAMA), mode=mode,
                                dtype='bf16', prompt_cache=False)

    def forward(self, scene):
        return self.bridge(scene)


@pytest.mark.parametrize('mode', ['lora', 'full'])
def test_llm_bridge_shards_and_trains(tmp_path, one_rank_group, mode):
    """The stage-3 bridges under the 7B configs' strategy: bf16 layers, fp32 gradients
    for exactly what trains (the LLM's fp32 masters in ``full``, the adapters in ``lora``)."""
    strategy = _strategy(tmp_path, mixed_precision=dict(param_dtype='bf16', reduce_dtype='fp32'),
                         activation_checkpointing=True)
    model = strategy._wrap_model(_BridgeRoot(mode))
    model(torch.randn(2, 6, 16)).float().pow(2).sum().backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    llm = [n for n in trained if n.startswith('bridge.llm.')]
    assert llm and all(('lora_' in n) == (mode == 'lora') for n in llm)
    for name, param in trained.items():
        assert isinstance(param, DTensor) and param.dtype == torch.float32, name
        if 'embed_tokens' not in name:  # inputs_embeds: the embedding table is not read
            assert param.grad is not None and param.grad.dtype == torch.float32, name


def test_cpu_offload_trains(tmp_path, one_rank_group):
    strategy = _strategy(tmp_path, cpu_offload=True, activation_checkpointing=True)
    model = strategy._wrap_model(TinyLLMModel())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.head.weight.full_tensor().clone()
    model(torch.randn(2, 5, 8))['loss'].backward()
    optimizer.step()
    assert not torch.equal(model.head.weight.full_tensor(), before)
    assert model.head.weight.to_local().device.type == 'cpu'


def test_wrap_errors(tmp_path, one_rank_group):
    with pytest.raises(ValueError, match="layer_cls=\\['GPT2Block'\\]: no module"):
        _strategy(tmp_path, layer_cls=['GPT2Block'])._wrap_model(TinyLLMModel())
    with pytest.raises(ValueError, match='gradient_checkpointing=False'):
        _strategy(tmp_path, activation_checkpointing=True)._wrap_model(
            TinyLLMModel(gradient_checkpointing=True))
    model = TinyLLMModel()
    model.bridge = nn.Module()
    model.bridge.prompt_cache, model.bridge.mode = True, 'full'
    with pytest.raises(ValueError, match='model.bridge.prompt_cache=False'):
        _strategy(tmp_path)._wrap_model(model)
    with pytest.raises(ValueError, match='non-empty list'):
        _strategy(tmp_path, layer_cls='LlamaDecoderLayer')


@pytest.mark.parametrize('attention', ['causal', 'bidirectional'])
def test_bridge_without_prompt_cache_computes_the_same(attention):
    """``prompt_cache=False`` (needed under FSDP2 when the LLM trains) changes nothing else."""
    llm_cfg = dict(model_type='llama', **TINY_LLAMA)
    bridges = []
    for cache in (True, False):
        torch.manual_seed(0)
        bridges.append(LLMBridge(in_channels=16, embed_dims=8, num_map_queries=4,
                                 llm_cfg=llm_cfg, mode='full', dtype='fp32',
                                 map_query_attention=attention, prompt_cache=cache))
    bridges[1].load_state_dict(bridges[0].state_dict())
    scene = torch.randn(2, 6, 16)
    outs, grads = [], []
    for bridge in bridges:
        out = bridge(scene)
        out.pow(2).sum().backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in bridge.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    assert grads[1].keys() == grads[0].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_one_process_load_is_strict(tmp_path):
    strategy = _strategy(tmp_path, launcher='none')
    strategy.prepare(TinyLLMModel())
    state = {k: v for k, v in TinyLLMModel().state_dict().items() if 'head' not in k}
    torch.save(dict(state_dict=state), tmp_path / 'partial.pth')
    with pytest.raises(CheckpointMismatchError, match='head.weight'):
        strategy.load_checkpoint(str(tmp_path / 'partial.pth'))
    strategy.checkpoint_check = dict(allow_missing=['head.*'])
    strategy.load_checkpoint(str(tmp_path / 'partial.pth'))
    torch.testing.assert_close(strategy.model.llm.norm.weight, state['llm.norm.weight'])


def test_one_process_load_from_a_sharded_folder(tmp_path):
    """``load_from`` a sharded folder reads its model shards only, with the key check."""
    saver = _strategy(tmp_path / 'a', launcher='none')
    saver.prepare(TinyLLMModel(), optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)))
    with torch.no_grad():
        saver.model.head.weight.add_(1.0)
    folder = str(tmp_path / 'checkpoint_epoch_1.pth')
    saver.save_checkpoint(folder, extra_ckpt=dict(meta=dict(epoch=1, iter=1)))
    assert is_sharded_checkpoint(folder)
    loader = _strategy(tmp_path / 'b', launcher='none')
    loader.prepare(TinyLLMModel())
    meta = loader.load_checkpoint(folder)['meta']
    assert meta['epoch'] == 1 and 'rng_state' in meta
    for key, value in saver.model.state_dict().items():
        torch.testing.assert_close(loader.model.state_dict()[key], value, msg=key)
    loader.model.extra = nn.Linear(2, 2)  # a key the folder lacks
    with pytest.raises(CheckpointMismatchError, match='extra.weight'):
        loader.load_checkpoint(folder)


def _flexible_toy(path, work_dir, **kwargs) -> str:
    """The toy config on MapFlexibleRunner + FSDP2Strategy; one process, so no sharding."""
    return write_toy_config(path, work_dir, runner_type='MapFlexibleRunner',
                            strategy=dict(type='FSDP2Strategy'), **kwargs)


def test_one_process_checkpoints_resume_and_export(tmp_path):
    """Periodic checkpoints are DCP folders, best/final one lean file; resuming a folder
    (random draws in training, validation every epoch) equals the uninterrupted run."""
    straight = str(tmp_path / 'straight')
    train_tool.main([_flexible_toy(tmp_path / 's.py', straight, max_epochs=2,
                                   stochastic=True)])
    epoch1 = osp.join(straight, 'checkpoint_epoch_1.pth')
    assert is_sharded_checkpoint(epoch1) and osp.isfile(osp.join(straight, 'final_model.pth'))
    assert osp.isfile(osp.join(straight, 'config.py'))
    ref = torch.load(osp.join(straight, 'final_model.pth'), weights_only=True)
    assert ref['meta']['iter'] == 8 and 'optimizer' not in ref  # 8 samples / 2 x 2 epochs

    resumed = str(tmp_path / 'resumed')
    train_tool.main([_flexible_toy(tmp_path / 'r.py', resumed, max_epochs=2, stochastic=True),
                     '--resume', epoch1])
    got = torch.load(osp.join(resumed, 'final_model.pth'), weights_only=True)
    assert got['meta']['iter'] == 8 and got['state_dict'].keys() == ref['state_dict'].keys()
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0, msg=key)

    exported = str(tmp_path / 'epoch2.pth')
    export_tool.main([osp.join(straight, 'checkpoint_epoch_2.pth'), exported])
    export = torch.load(exported, weights_only=True)
    assert all(torch.equal(export['state_dict'][k], v) for k, v in ref['state_dict'].items())
    # the export is an ordinary checkpoint: tools/test.py loads it strictly in one process,
    # with MapRunner and with the sharded config
    test_tool.main([write_toy_config(tmp_path / 't.py', str(tmp_path / 'test')), exported])
    test_tool.main([_flexible_toy(tmp_path / 'tf.py', str(tmp_path / 'test_flex')), exported])


def test_one_process_resume_mid_epoch(tmp_path):
    """An iteration checkpoint (iteration 3 of 4 in epoch 1) resumes where it stopped."""
    hooks = dict(checkpoint=dict(type='MapCheckpointHook', by_epoch=False, interval=3,
                                 save_best=None))
    straight = str(tmp_path / 'straight')
    train_tool.main([_flexible_toy(tmp_path / 's.py', straight, stochastic=True,
                                   default_hooks=hooks)])
    resumed = str(tmp_path / 'resumed')
    train_tool.main([_flexible_toy(tmp_path / 'r.py', resumed, stochastic=True,
                                   default_hooks=hooks),
                     '--resume', osp.join(straight, 'checkpoint_iter_3.pth')])
    ref = torch.load(osp.join(straight, 'final_model.pth'), weights_only=True)
    got = torch.load(osp.join(resumed, 'final_model.pth'), weights_only=True)
    assert got['meta']['iter'] == ref['meta']['iter'] == 8
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0, msg=key)


def test_resume_and_export_refuse_single_files(tmp_path, capsys):
    work = str(tmp_path / 'work')
    cfg = _flexible_toy(tmp_path / 'a.py', work, max_epochs=1)
    train_tool.main([cfg])
    final = osp.join(work, 'final_model.pth')
    with pytest.raises(ConfigCheckError, match='cannot resume from .*final_model.pth'):
        train_tool.main([cfg, '--resume', final])
    with pytest.raises(ConfigCheckError, match='not a sharded checkpoint folder'):
        export_tool.main([final, str(tmp_path / 'out.pth')])
    with pytest.raises(ConfigCheckError, match='sharded checkpoint folder; write it as one'):
        test_tool.main([cfg, osp.join(work, 'checkpoint_epoch_1.pth')])
