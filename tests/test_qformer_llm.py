"""Q-Former neck and LLM / bypass bridges on tiny CPU models."""
import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import get_state_dict
from mmengine.runner.checkpoint import load_state_dict as mmengine_load_state_dict
from torch import nn

from projects.MapLLaVA.mapllava.models.llm import BypassBridge, LLMBridge, byte_prompt_ids
from projects.MapLLaVA.mapllava.models.necks import QFormerNeck

BEV_C = 16
QFORMER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               encoder_hidden_size=32, cross_attention_frequency=1)
LLAMA = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, vocab_size=512, max_position_embeddings=512)
NUM_Q, EMBED = 6, 32


def tiny_neck(**kwargs) -> QFormerNeck:
    return QFormerNeck(BEV_C, qformer_cfg=QFORMER, num_query_tokens=8, **kwargs)


def bridge(mode: str, **kwargs) -> nn.Module:
    if mode == 'bypass':
        return BypassBridge(64, EMBED, NUM_Q, width=64, num_heads=4, ffn_dims=128, **kwargs)
    kwargs.setdefault('llm_cfg', LLAMA)
    return LLMBridge(64, EMBED, NUM_Q, mode=mode, dtype='fp32',
                     lora_cfg=dict(r=4, lora_alpha=8, lora_dropout=0.0), **kwargs)


def bev(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, BEV_C, 12, 6, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def llm_dir(tmp_path_factory) -> str:
    """A tiny Llama checkpoint with a tokenizer trained offline on a few words."""
    path = str(tmp_path_factory.mktemp('llm'))
    save_tiny_llm(path, LLAMA, ['describe the vectorized map', 'lane dividers road boundaries'])
    return path


def save_tiny_llm(path: str, llama_cfg: dict, corpus: list[str]) -> None:
    """``save_pretrained`` a random Llama (seed 0) and a word-level tokenizer trained on
    ``corpus`` into ``path``, as a local ``llm_path`` to load back."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**llama_cfg)).save_pretrained(path)
    tok = Tokenizer(models.WordLevel(unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus,
                            trainers.WordLevelTrainer(special_tokens=['<unk>', '<s>', '</s>']))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>', bos_token='<s>',
                            eos_token='</s>').save_pretrained(path)


def test_neck_shapes() -> None:
    for kwargs in (dict(), dict(downsample=2), dict(downsample=3, downsample_mode='conv')):
        neck = tiny_neck(**kwargs)
        assert neck(bev()).shape == (2, 8, 64)
        assert neck([bev(1)]).shape == (1, 8, 64)
    with pytest.raises(ValueError, match='multiple of 4'):
        QFormerNeck(BEV_C, qformer_cfg={**QFORMER, 'encoder_hidden_size': 30})


def test_neck_gradient_checkpointing_matches() -> None:
    cfg = {**QFORMER, 'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0}
    torch.manual_seed(0)
    plain = QFormerNeck(BEV_C, qformer_cfg=cfg, num_query_tokens=8).train()
    ckpt = QFormerNeck(BEV_C, qformer_cfg=cfg, num_query_tokens=8,
                       gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    ckpt.qformer.encoder.layer[0].crossattention.register_forward_pre_hook(
        lambda *args: calls.append(1))
    results = []
    for neck in (plain, ckpt):
        x = bev().requires_grad_()
        out = neck(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out, x.grad, {n: p.grad for n, p in neck.named_parameters()}))
    assert len(calls) == 2  # forward + recomputation in backward
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for name, grad in results[0][2].items():
        torch.testing.assert_close(grad, results[1][2][name], msg=name)


@pytest.mark.parametrize('shard', [None, '40KB'])
def test_neck_pretrained_blip2(tmp_path, shard) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        qformer_config=QFORMER,
        text_config=dict(model_type='opt', hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, ffn_dim=64, vocab_size=100,
                         word_embed_proj_dim=32, max_position_embeddings=64),
        num_query_tokens=5)
    blip2 = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        blip2.query_tokens.normal_()
    kwargs = {} if shard is None else dict(max_shard_size=shard)
    blip2.save_pretrained(tmp_path, **kwargs)
    assert (shard is None) != (tmp_path / 'model.safetensors.index.json').exists()

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        neck = QFormerNeck(BEV_C, pretrained=str(tmp_path), qformer_cfg=dict(hidden_dropout_prob=0))
    finally:
        logger.removeHandler(handler)
    assert neck.num_query_tokens == 5 and neck.qformer.config.hidden_size == 64
    assert neck.qformer.config.hidden_dropout_prob == 0
    torch.testing.assert_close(neck.query_tokens, blip2.query_tokens, rtol=0, atol=0)
    saved = blip2.qformer.state_dict()
    for key, value in neck.qformer.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    log = ' '.join(r.getMessage() for r in records)
    assert 'loaded' in log and 'qformer.layernorm.weight' in log and 'query_tokens' in log

    # mmengine's recursive init_weights must not re-initialise the loaded Q-Former.
    parent = BaseModule()
    parent.neck = neck
    parent.init_weights()
    torch.testing.assert_close(neck.qformer.state_dict()['layernorm.weight'],
                               saved['layernorm.weight'], rtol=0, atol=0)
    assert neck(bev()).shape == (2, 5, 64)


def test_missing_paths(tmp_path) -> None:
    missing = str(tmp_path / 'no_such_checkpoint')
    with pytest.raises(FileNotFoundError, match='no_such_checkpoint'):
        QFormerNeck(BEV_C, pretrained=missing)
    with pytest.raises(FileNotFoundError, match='no_such_checkpoint'):
        LLMBridge(64, llm_path=missing)
    with pytest.raises(FileNotFoundError, match='no config.json'):
        QFormerNeck(BEV_C, pretrained=str(tmp_path))


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full', 'bypass'])
def test_bridge_modes_shapes_and_grads(mode) -> None:
    neck, br = tiny_neck(), bridge(mode)
    out = br(neck(bev()))
    assert out.shape == (2, NUM_Q, EMBED) and out.dtype == torch.float32
    assert (br.num_map_queries, br.embed_dims) == (NUM_Q, EMBED)
    out.square().mean().backward()

    for name, p in list(neck.named_parameters()) + list(br.named_parameters()):
        if name.startswith(('scene_proj', 'map_queries', 'out_proj', 'transformer', 'qformer.',
                            'query_tokens', 'bev_proj')):
            assert p.grad is not None, name
    llm_params = dict(br.llm.named_parameters()) if mode != 'bypass' else {}
    if mode == 'frozen':
        assert not br.llm.training
        assert all(not p.requires_grad and p.grad is None for p in llm_params.values())
    elif mode == 'lora':
        trainable = {n for n, p in llm_params.items() if p.requires_grad}
        assert trainable and all('lora_' in n for n in trainable)
        assert all(p.grad is not None for n, p in llm_params.items() if n in trainable)
        assert all(p.grad is None for n, p in llm_params.items() if n not in trainable)
    elif mode == 'full':
        assert llm_params['model.layers.0.mlp.up_proj.weight'].grad is not None
        assert not llm_params['lm_head.weight'].requires_grad  # unused by the bridge


def test_bridge_bf16_llm_keeps_fp32_boundary() -> None:
    br = LLMBridge(64, EMBED, NUM_Q, llm_cfg=LLAMA, dtype='bf16', projector='linear')
    scene = torch.randn(2, 8, 64)
    out = br(scene)
    assert out.dtype == torch.float32 and br.llm.dtype == torch.bfloat16
    out.sum().backward()
    assert br.scene_proj.weight.grad is not None and br.map_queries.grad is not None
    assert byte_prompt_ids('ab', 512, 1) == [1, 97, 98]
    assert br.prompt_ids[0] == br.llm.config.bos_token_id


@pytest.mark.parametrize('mode', ['frozen', 'lora'])
def test_gradient_checkpointing_matches(mode) -> None:
    torch.manual_seed(0)
    plain = bridge(mode)
    ckpt = bridge(mode, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []  # tokens per call: the prompt once, then scene + map queries
    ckpt.decoder.layers[0].mlp.register_forward_pre_hook(
        lambda module, args: calls.append(args[0].shape[1]))
    scene = torch.randn(2, 8, 64)
    results = []
    for br in (plain, ckpt):
        x = scene.clone().requires_grad_()
        out = br(x)
        out.square().mean().backward()
        grads = {n: p.grad for n, p in br.named_parameters() if p.requires_grad}
        results.append((out, x.grad, grads))
    # forward + recomputation in backward: checkpointing is active
    assert calls.count(8 + NUM_Q) == 2
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][2].keys() == results[1][2].keys()
    for name, grad in results[0][2].items():
        torch.testing.assert_close(grad, results[1][2][name], msg=name)


def test_llm_from_path_matches_saved_model(llm_dir) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    br = bridge('frozen', llm_cfg=None, llm_path=llm_dir, prompt='describe the map')
    assert br.prompt_ids.tolist() == AutoTokenizer.from_pretrained(llm_dir)(
        'describe the map')['input_ids']
    scene = torch.randn(2, 8, 64)
    with torch.no_grad():
        out = br(scene)
        ref = LlamaForCausalLM.from_pretrained(llm_dir).eval()
        prompt = ref.get_input_embeddings()(br.prompt_ids).expand(2, -1, -1)
        queries = br.map_queries.expand(2, -1, -1)
        seq = torch.cat([prompt, br.scene_proj(scene), queries], dim=1)
        hidden = ref(inputs_embeds=seq, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(out, br.out_proj(hidden[:, -NUM_Q:]))


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full'])
def test_state_dict_excludes_reloadable_llm(llm_dir, mode) -> None:
    torch.manual_seed(0)
    parent = nn.Module()
    parent.bridge = bridge(mode, llm_cfg=None, llm_path=llm_dir)
    with torch.no_grad():  # make the adapters matter (peft initialises lora_B to zero)
        for name, p in parent.bridge.named_parameters():
            if 'lora_B' in name:
                p.normal_()
    state = parent.state_dict()
    assert get_state_dict(parent).keys() == state.keys()  # mmengine's saver agrees
    llm_keys = [k for k in state if k.startswith('bridge.llm.')]
    if mode == 'frozen':
        assert not llm_keys
    elif mode == 'lora':
        assert llm_keys and all('lora_' in k for k in llm_keys)
    else:
        assert 'bridge.llm.model.layers.0.self_attn.q_proj.weight' in llm_keys
    assert 'bridge.map_queries' in state and 'bridge.scene_proj.0.weight' in state

    scene = torch.randn(2, 8, 64)
    for load in (lambda m, s: m.load_state_dict(s, strict=True),
                 lambda m, s: mmengine_load_state_dict(m, s, strict=True)):
        torch.manual_seed(1)
        fresh = nn.Module()
        fresh.bridge = bridge(mode, llm_cfg=None, llm_path=llm_dir)
        load(fresh, state)
        with torch.no_grad():
            torch.testing.assert_close(fresh.bridge(scene), parent.bridge(scene))
    # A missing non-LLM key is still reported.
    with pytest.raises(RuntimeError, match='map_queries'):
        fresh.load_state_dict({k: v for k, v in state.items() if 'map_queries' not in k})


def test_config_llm_weights_stay_in_state_dict() -> None:
    state = bridge('frozen').state_dict()
    assert 'llm.model.layers.0.self_attn.q_proj.weight' in state


def uncached(br: LLMBridge, scene: torch.Tensor) -> torch.Tensor:
    """The bridge's output with ``[prompt, scene, queries]`` run as one sequence."""
    decoder = br.decoder
    seq_scene = br.scene_proj(scene)
    prompt = decoder.get_input_embeddings()(br.prompt_ids).expand(scene.shape[0], -1, -1)
    queries = br.map_queries.expand(scene.shape[0], -1, -1)
    seq = torch.cat([prompt, seq_scene.to(prompt.dtype), queries.to(prompt.dtype)], dim=1)
    mask = None
    if br.map_query_attention == 'bidirectional':
        mask = br.map_query_mask(seq.shape[0], seq.shape[1], NUM_Q, prompt.dtype, seq.device)
    hidden = decoder(inputs_embeds=seq, attention_mask=mask, use_cache=False).last_hidden_state
    return br.out_proj(hidden[:, -NUM_Q:].to(br.out_proj.weight.dtype))


def _outputs_and_grads(br: nn.Module, fn, scene: torch.Tensor, weights: torch.Tensor):
    x = scene.clone().requires_grad_()
    out = fn(br, x)
    params = [p for p in br.parameters() if p.requires_grad]
    # a random projection: the squared norm of RMS-normalised states has ~zero gradient
    grads = torch.autograd.grad((out * weights).sum(), [x] + params)
    return out, grads


@pytest.mark.parametrize('checkpointing', [False, True])
@pytest.mark.parametrize('attention', ['causal', 'bidirectional'])
@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full'])
def test_prompt_cache_matches_the_full_sequence(mode, attention, checkpointing) -> None:
    torch.manual_seed(0)
    br = bridge(mode, map_query_attention=attention, gradient_checkpointing=checkpointing,
                prompt='describe the map')
    with torch.no_grad():  # make the adapters matter (peft initialises lora_B to zero)
        for name, p in br.named_parameters():
            if 'lora_B' in name:
                p.normal_(std=0.1)
    br.train()
    scene, weights = torch.randn(3, 8, 64), torch.randn(3, NUM_Q, EMBED)
    for _ in range(2):  # the second forward of frozen mode reads the kept prompt states
        out, grads = _outputs_and_grads(br, lambda m, x: m(x), scene, weights)
        ref, ref_grads = _outputs_and_grads(br, uncached, scene, weights)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'uncached'])
def test_prompt_runs_once_at_batch_one(mode) -> None:
    kwargs = dict(prompt_cache=False) if mode == 'uncached' else {}
    br = bridge('frozen' if mode == 'uncached' else mode, prompt='describe the map', **kwargs)
    seen = []
    br.decoder.layers[0].register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[:2])))
    for _ in range(2):
        br(torch.randn(3, 8, 64))
    prompt, rest = (1, br.prompt_ids.numel()), (3, 8 + NUM_Q)
    # frozen: computed once and kept; lora / full: once per forward, not once per sample;
    # prompt_cache=False: the whole sequence every time
    expected = dict(frozen=[prompt, rest, rest], lora=[prompt, rest] * 2,
                    uncached=[(3, prompt[1] + rest[1])] * 2)
    assert seen == expected[mode]


def test_frozen_prompt_cache_is_not_saved_and_follows_dtype_and_weights() -> None:
    torch.manual_seed(0)
    br = bridge('frozen', prompt='describe the map').eval()
    scene = torch.randn(2, 8, 64)
    with torch.no_grad():
        br(scene)
        assert br._frozen_prompt is not None
        assert not [k for k in br.state_dict() if 'prompt' in k or 'frozen' in k]

        br.double()  # another dtype: rebuilt, not mixed with the fp32 states
        torch.testing.assert_close(br(scene.double()), uncached(br, scene.double()))
        assert br._frozen_prompt[1][0][0].dtype == torch.float64
        br.float()

        other = bridge('frozen', prompt='describe the map')  # other random LLM weights
        state = other.state_dict()
        br.load_state_dict(state)
        torch.testing.assert_close(br(scene), uncached(br, scene), rtol=0, atol=1e-5)
        torch.testing.assert_close(br(scene), other.eval()(scene), rtol=0, atol=1e-5)
