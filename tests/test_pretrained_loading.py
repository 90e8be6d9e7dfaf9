"""Pretrained weights that do not fit the model fail loudly (Q-Former, LLM, image backbone).

Every checkpoint is a real ``save_pretrained`` folder (or ``torch.save`` file) of a small
randomly initialised model; nothing is downloaded.
"""
import logging
import os
import shutil
from collections import OrderedDict

import pytest
import torch
from mmdet.models.backbones import ResNet
from mmengine.logging import MMLogger
from mmengine.registry import WEIGHT_INITIALIZERS, DefaultScope
from safetensors.torch import load_file, save_file
from test_qformer_llm import BEV_C, QFORMER, llm_dir  # noqa: F401 (fixture)

from projects.MapLLaVA.mapllava.models import StrictPretrainedInit
from projects.MapLLaVA.mapllava.models.llm import LLMBridge
from projects.MapLLaVA.mapllava.models.llm.hf_utils import PretrainedWeightsError
from projects.MapLLaVA.mapllava.models.necks import QFormerNeck

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=28, patch_size=14)
LLAMA_TEXT = dict(model_type='llama', hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, vocab_size=100,
                  max_position_embeddings=64)


class LogRecords(logging.Handler):
    """Collect the messages of the current MMLogger while in the ``with`` block."""

    def __enter__(self) -> list[str]:
        self.messages: list[str] = []
        MMLogger.get_current_instance().addHandler(self)
        return self.messages

    def __exit__(self, *exc) -> None:
        MMLogger.get_current_instance().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def save_blip2(path, cls_name: str = 'Blip2Model') -> torch.nn.Module:
    """A tiny BLIP-2 (or InstructBLIP) with a Llama text model, saved to ``path``."""
    import transformers

    instruct = cls_name.startswith('InstructBlip')
    config_cls = transformers.InstructBlipConfig if instruct else transformers.Blip2Config
    qformer = {**QFORMER, 'vocab_size': 100, 'max_position_embeddings': 64} if instruct \
        else QFORMER
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config_cls(
        vision_config=VISION, qformer_config=qformer, text_config=LLAMA_TEXT,
        num_query_tokens=5))
    with torch.no_grad():
        model.query_tokens.normal_()
    model.save_pretrained(path)
    return model


def rewrite_safetensors(folder, edit) -> None:
    """Replace ``model.safetensors`` by ``edit(tensors)`` (a dict of name → tensor)."""
    file = os.path.join(folder, 'model.safetensors')
    tensors = load_file(file)
    save_file(edit(tensors), file, metadata={'format': 'pt'})


def test_blip2_model_layout_loads(tmp_path) -> None:
    blip2 = save_blip2(tmp_path)
    with LogRecords() as log:
        neck = QFormerNeck(BEV_C, pretrained=str(tmp_path))
    assert neck.num_query_tokens == 5
    torch.testing.assert_close(neck.query_tokens, blip2.query_tokens, rtol=0, atol=0)
    saved = blip2.qformer.state_dict()
    loaded = neck.qformer.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)
    assert any('loaded' in m and 'qformer.layernorm.weight' in m for m in log)


def test_instructblip_checkpoint_raises(tmp_path) -> None:
    save_blip2(tmp_path, 'InstructBlipForConditionalGeneration')
    with pytest.raises(PretrainedWeightsError) as err:
        QFormerNeck(BEV_C, pretrained=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and 'missing' in msg and 'qformer.layernorm.weight' in msg
    assert 'unexpected' in msg and 'qformer.embeddings.layernorm.weight' in msg
    assert 'InstructBLIP' in msg


def test_lavis_keys_raise(tmp_path) -> None:
    save_blip2(tmp_path)
    rewrite_safetensors(tmp_path, lambda t: {
        ('Qformer.bert.' + k[len('qformer.'):] if k.startswith('qformer.') else k): v
        for k, v in t.items()})
    with pytest.raises(PretrainedWeightsError) as err:
        QFormerNeck(BEV_C, pretrained=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and 'no qformer.*' in msg and 'LAVIS' in msg
    assert 'Blip2Model' in msg  # the supported layout


def test_missing_query_tokens_and_shape_override_raise(tmp_path) -> None:
    save_blip2(tmp_path)
    with pytest.raises(PretrainedWeightsError, match=r'shape mismatch.*query_tokens'):
        QFormerNeck(BEV_C, pretrained=str(tmp_path), num_query_tokens=7)
    rewrite_safetensors(tmp_path, lambda t: {k: v for k, v in t.items() if k != 'query_tokens'})
    with pytest.raises(PretrainedWeightsError, match=r'1 missing key\(s\): query_tokens'):
        QFormerNeck(BEV_C, pretrained=str(tmp_path))


def llm_bridge(path: str) -> LLMBridge:
    return LLMBridge(64, 32, 6, llm_path=path, dtype='fp32')


def test_llm_folder_loads(llm_dir) -> None:  # noqa: F811
    from transformers import LlamaForCausalLM

    bridge = llm_bridge(llm_dir)
    ref = LlamaForCausalLM.from_pretrained(llm_dir).state_dict()
    for key, value in bridge.llm.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=key)


def test_llm_missing_weight_raises(llm_dir, tmp_path) -> None:  # noqa: F811
    folder = str(tmp_path / 'llm')
    shutil.copytree(llm_dir, folder)
    key = 'model.layers.1.mlp.down_proj.weight'
    rewrite_safetensors(folder, lambda t: {k: v for k, v in t.items() if k != key})
    with pytest.raises(PretrainedWeightsError) as err:
        llm_bridge(folder)
    assert folder in str(err.value) and key in str(err.value)


def test_llm_mismatched_weight_raises(llm_dir, tmp_path) -> None:  # noqa: F811
    folder = str(tmp_path / 'llm')
    shutil.copytree(llm_dir, folder)
    key = 'model.layers.0.mlp.up_proj.weight'
    rewrite_safetensors(folder, lambda t: {**t, key: t[key][:-1].clone()})
    with pytest.raises(PretrainedWeightsError, match='shape mismatch') as err:
        llm_bridge(folder)
    assert folder in str(err.value) and key in str(err.value)


def test_llm_unexpected_keys_only_warn(llm_dir, tmp_path) -> None:  # noqa: F811
    folder = str(tmp_path / 'llm')
    shutil.copytree(llm_dir, folder)
    extras = {'model.layers.0.self_attn.rotary_emb.inv_freq': torch.ones(16),  # old Vicuna
              'model.extra_head.weight': torch.ones(2)}
    rewrite_safetensors(folder, lambda t: {**t, **extras})
    with LogRecords() as log:
        llm_bridge(folder)
    assert any('unexpected' in m and 'model.extra_head.weight' in m and folder in m for m in log)


def save_resnet(path, prefix: str = '') -> OrderedDict:
    """A random ResNet-18 state dict plus torchvision's classifier keys, saved to ``path``."""
    torch.manual_seed(0)
    state = OrderedDict((k, torch.rand_like(v) + 0.5 if v.is_floating_point() else v)
                        for k, v in ResNet(depth=18).state_dict().items())  # BN stats too
    state['fc.weight'], state['fc.bias'] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(OrderedDict((prefix + k, v) for k, v in state.items()), path)
    return state


def resnet(checkpoint: str, **kwargs) -> ResNet:
    torch.manual_seed(1)
    return ResNet(depth=18, init_cfg=dict(type='StrictPretrained', checkpoint=checkpoint,
                                          **kwargs))


@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_strict_pretrained_loads_and_ignores_fc(tmp_path, prefix) -> None:
    path = str(tmp_path / 'r18.pth')
    state = save_resnet(path, prefix)
    model = resnet(path, **(dict(prefix=prefix) if prefix else {}))
    with LogRecords() as log, DefaultScope.overwrite_default_scope('mmdet3d'):
        model.init_weights()  # resolves the type from mmdet3d's scope, as in training
    for key, value in model.state_dict().items():
        if not key.endswith('num_batches_tracked'):
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    assert any('StrictPretrained' in m and 'fc.weight' in m for m in log)
    assert WEIGHT_INITIALIZERS.get('StrictPretrained') is StrictPretrainedInit


def test_strict_pretrained_refuses_other_prefix(tmp_path) -> None:
    path = str(tmp_path / 'detector.pth')
    save_resnet(path, prefix='img_backbone.')
    with pytest.raises(PretrainedWeightsError) as err:
        resnet(path).init_weights()
    msg = str(err.value)
    assert path in msg and 'missing key' in msg and 'conv1.weight' in msg
    with pytest.raises(PretrainedWeightsError, match="no key under prefix 'backbone.'.*img_"):
        resnet(path, prefix='backbone').init_weights()


def test_strict_pretrained_refuses_other_depth(tmp_path) -> None:
    path = str(tmp_path / 'r18.pth')
    save_resnet(path)
    model = ResNet(depth=34, init_cfg=dict(type='StrictPretrained', checkpoint=path))
    with pytest.raises(PretrainedWeightsError, match=r'missing key.*layer1\.2\.'):
        model.init_weights()
