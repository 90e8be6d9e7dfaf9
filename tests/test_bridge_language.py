"""The LLM bridge's language path: answer loss, text codec and generation on a tiny Llama."""
import pytest
import torch
import torch.nn.functional as F

from projects.MapLLaVA.mapllava.models.llm import (
    IGNORE_INDEX,
    ByteCodec,
    LLMBridge,
    byte_prompt_ids,
)
from tests.test_qformer_llm import save_tiny_llm

LLAMA = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, vocab_size=512, max_position_embeddings=512)
NUM_Q, EMBED, WIDTH = 6, 32, 64
QUESTIONS = ['how many lane dividers?', 'is there a crossing?']
ANSWERS = ['3', 'no']

pytestmark = pytest.mark.usefixtures('single_thread')


def bridge(mode: str = 'frozen', **kwargs) -> LLMBridge:
    kwargs.setdefault('llm_cfg', LLAMA)
    kwargs.setdefault('dtype', 'fp32')
    return LLMBridge(WIDTH, EMBED, NUM_Q, mode=mode, prompt='describe the map',
                     lora_cfg=dict(r=4, lora_alpha=8, lora_dropout=0.0), **kwargs)


def scene(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 8, WIDTH, generator=torch.Generator().manual_seed(seed))


def perturb_lora(br: LLMBridge) -> None:
    """peft starts lora_B at zero, which would hide a wrong adapter wiring."""
    with torch.no_grad():
        for name, p in br.named_parameters():
            if 'lora_B' in name:
                p.normal_(std=0.1)


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full'])
def test_without_text_the_map_path_is_the_map_only_bridge(mode) -> None:
    """lm_loss_weight only adds the language path: forward (outputs and gradients) is
    bit-identical to a bridge built with the old arguments."""
    results = []
    for kwargs in (dict(), dict(lm_loss_weight=0.0), dict(lm_loss_weight=2.0)):
        torch.manual_seed(0)
        br = bridge(mode, map_query_attention='bidirectional', **kwargs)
        perturb_lora(br)
        x = scene().requires_grad_()
        out = br(x)
        out.sum().backward()
        results.append((out, x.grad, {n: p.grad for n, p in br.named_parameters()
                                      if p.grad is not None}))
    for out, x_grad, grads in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(x_grad, results[0][1])
        assert grads.keys() == results[0][2].keys()
        assert all(torch.equal(g, results[0][2][n]) for n, g in grads.items())


def test_full_mode_trains_the_head_only_with_the_lm_loss() -> None:
    off, on = bridge('full', dtype='bf16'), bridge('full', dtype='bf16', lm_loss_weight=1.0)
    head_off, head_on = (b.causal_lm.get_output_embeddings().weight for b in (off, on))
    assert not head_off.requires_grad and head_off.dtype == torch.bfloat16
    assert head_on.requires_grad and head_on.dtype == torch.float32  # fp32 master
    _, losses = on.forward_with_text(scene(), QUESTIONS, ANSWERS)
    losses['loss_lm'].backward()
    assert head_on.grad is not None and head_on.grad.abs().sum() > 0


@pytest.mark.parametrize('prompt_cache', [True, False])
@pytest.mark.parametrize('attention', ['causal', 'bidirectional'])
@pytest.mark.parametrize('mode', ['frozen', 'lora'])
def test_map_queries_do_not_read_the_text(mode, attention, prompt_cache) -> None:
    torch.manual_seed(0)
    br = bridge(mode, map_query_attention=attention, prompt_cache=prompt_cache,
                lm_loss_weight=1.0)
    perturb_lora(br)
    br.eval()
    x = scene()
    with torch.no_grad():
        plain = br(x)
        first, losses = br.forward_with_text(x, QUESTIONS, ANSWERS)
        # other text, other lengths (so other padding), one sample without text
        other, _ = br.forward_with_text(x, ['a much longer question about it?', None],
                                        ['a long answer', None])
    assert torch.isfinite(losses['loss_lm']) and losses['loss_lm'] > 0
    torch.testing.assert_close(first, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(other, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full'])
@pytest.mark.parametrize('dtype', ['fp32', 'bf16'])
def test_answer_loss_gradients_reach_the_right_parameters(mode, dtype) -> None:
    torch.manual_seed(0)
    br = bridge(mode, dtype=dtype, lm_loss_weight=1.0, gradient_checkpointing=dtype == 'bf16')
    x = scene().requires_grad_()
    queries, losses = br.forward_with_text(x, QUESTIONS, ANSWERS)
    assert queries.dtype == torch.float32 and losses['loss_lm'].dtype == torch.float32
    assert torch.isfinite(losses['loss_lm']) and losses['loss_lm'] > 0
    losses['loss_lm'].backward()
    for p in (x, br.scene_proj[0].weight, br.map_queries):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert br.out_proj.weight.grad is None  # the answer does not go through the map head
    llm = dict(br.llm.named_parameters())
    if mode == 'frozen':
        assert all(p.grad is None for p in llm.values())
    elif mode == 'lora':
        lora_b = [p for n, p in llm.items() if 'lora_B' in n]
        assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
        assert all(p.grad is None for n, p in llm.items() if 'lora_' not in n)
    else:
        for name in ('model.layers.0.mlp.up_proj.weight', 'lm_head.weight'):
            assert llm[name].dtype == torch.float32 and llm[name].grad is not None, name


def test_loss_scores_only_answer_tokens_and_matches_a_hand_computation() -> None:
    r"""loss_lm = w / N * sum_b sum_{t in A_b} -log softmax(z_{b,t-1})[y_{b,t}]: A_b are the
    answer ids and EOS of sample b, z the vocabulary logits of the causal LM run on that
    sample's own unpadded [prompt, scene, map queries, question, answer], N = sum_b |A_b|."""
    torch.manual_seed(0)
    br = bridge('frozen', lm_loss_weight=0.5).eval()
    qa = br.encode_qa(QUESTIONS, ANSWERS)
    eos = br.codec.eos_token_id
    for b, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
        q_len = len(br.question_template.format(question=question).encode())
        answer_ids = list(answer.encode()) + [eos]
        assert qa.labels[b, :q_len].eq(IGNORE_INDEX).all()
        assert qa.labels[b, q_len:q_len + len(answer_ids)].tolist() == answer_ids
        assert qa.labels[b, q_len + len(answer_ids):].eq(IGNORE_INDEX).all()  # padding
    # another question of the same length scores the same positions
    other = br.encode_qa(['HOW many lane dividers?', QUESTIONS[1]], ANSWERS)
    assert not torch.equal(other.input_ids, qa.input_ids)
    assert torch.equal(other.labels, qa.labels)

    x = scene()
    with torch.no_grad():
        _, losses = br.forward_with_text(x, QUESTIONS, ANSWERS)
        embed = br.decoder.get_input_embeddings()
        total, count = 0.0, 0
        for b, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
            q_ids = list(br.question_template.format(question=question).encode())
            a_ids = list(answer.encode()) + [eos]
            text = torch.tensor(q_ids + a_ids)
            seq = torch.cat([embed(br.prompt_ids), br.scene_proj(x[b]), br.map_queries,
                             embed(text)])[None]
            logits = br.causal_lm(inputs_embeds=seq).logits[0]
            first = seq.shape[1] - len(a_ids)  # position of the first answer id
            total += F.cross_entropy(logits[first - 1:-1], torch.tensor(a_ids),
                                     reduction='sum').item()
            count += len(a_ids)
    torch.testing.assert_close(losses['loss_lm'].item(), 0.5 * total / count,
                               rtol=1e-5, atol=1e-5)


def test_samples_without_text() -> None:
    br = bridge('frozen', lm_loss_weight=1.0).eval()
    x = scene()
    with torch.no_grad():
        _, mixed = br.forward_with_text(x, [None, QUESTIONS[1]], [None, ANSWERS[1]])
        _, alone = br.forward_with_text(x[1:], QUESTIONS[1:], ANSWERS[1:])
    torch.testing.assert_close(mixed['loss_lm'], alone['loss_lm'], rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    queries, none = br.forward_with_text(x, [None, None], [None, None])
    assert none['loss_lm'] == 0 and none['loss_lm'].requires_grad
    torch.testing.assert_close(queries, br(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='1 questions for a batch of 2'):
        br.forward_with_text(x, QUESTIONS[:1], ANSWERS[:1])
    with pytest.raises(ValueError, match='has no answer'):
        br.forward_with_text(x, QUESTIONS, [None, 'no'])


def test_byte_codec() -> None:
    codec = ByteCodec(512, 1, 2)
    text = 'Is there a pedestrian crossing? 3 — üñï\n'
    assert codec.decode(codec.encode(text)) == text
    assert codec.prompt_ids(text) == byte_prompt_ids(text, 512, 1)  # the map path's prompt
    assert codec.eos_token_id == 2  # Llama's default: a control byte, not text
    assert codec.decode(codec.encode('no') + [codec.eos_token_id]) == 'no'
    assert codec.decode([51, 300]) == '3\ufffd'  # a non-byte id stays visible
    assert ByteCodec(512, 1, ord('a')).eos_token_id == 256  # 'a' is text: reserved id
    assert ByteCodec(512, None, None).eos_token_id == 256
    with pytest.raises(ValueError, match='vocab_size > 256'):
        ByteCodec(256, 1, ord('a')).eos_token_id
    with pytest.raises(ValueError, match='vocab_size >= 256'):
        ByteCodec(100, 1, 2).encode('x')
    assert bridge().codec.eos_token_id == 2


def test_tokenizer_codec(tmp_path) -> None:
    from transformers import AutoTokenizer

    save_tiny_llm(str(tmp_path), LLAMA,
                  ['describe the map', 'is there a crossing ? ASSISTANT : yes no'])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    br = bridge(llm_cfg=None, llm_path=str(tmp_path), lm_loss_weight=1.0)
    qa = br.encode_qa(['is there a crossing?'], ['yes'])
    q_ids = tokenizer('\nis there a crossing? ASSISTANT:', add_special_tokens=False)['input_ids']
    a_ids = tokenizer('yes', add_special_tokens=False)['input_ids'] + [tokenizer.eos_token_id]
    assert tokenizer.unk_token_id not in q_ids + a_ids
    assert qa.input_ids[0].tolist() == q_ids + a_ids
    assert qa.labels[0].tolist() == [IGNORE_INDEX] * len(q_ids) + a_ids
    _, losses = br.forward_with_text(scene(1), ['is there a crossing?'], ['yes'])
    assert torch.isfinite(losses['loss_lm'])
    answer = br.eval().generate(scene(1), ['is there a crossing?'], max_new_tokens=3)
    assert isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)


@pytest.mark.parametrize('prompt_cache', [True, False])
@pytest.mark.parametrize('attention', ['causal', 'bidirectional'])
def test_generate_is_greedy_decoding_of_the_training_sequence(attention, prompt_cache) -> None:
    """Batched generate (questions of different lengths, left-padded against the cached map
    queries) = greedy decoding of each sample's own [prompt, scene, queries, question]."""
    torch.manual_seed(0)
    br = bridge('lora', map_query_attention=attention, prompt_cache=prompt_cache,
                lm_loss_weight=1.0)
    perturb_lora(br)
    br.eval()
    x, steps = scene(), 4
    eos = br.codec.eos_token_id
    seen = []
    generate = br.causal_lm.generate
    br.causal_lm.generate = lambda **kw: seen.append(generate(**kw)) or seen[-1]
    answers = br.generate(x, QUESTIONS, max_new_tokens=steps)
    embed = br.decoder.get_input_embeddings()
    with torch.no_grad():
        for b, question in enumerate(QUESTIONS):
            ids = list(br.question_template.format(question=question).encode())
            seq = torch.cat([embed(br.prompt_ids), br.scene_proj(x[b]), br.map_queries,
                             embed(torch.tensor(ids))])[None]
            expected = []
            for _ in range(steps):
                mask = None
                if attention == 'bidirectional':  # the query block before the text
                    after = seq.shape[1] - br.prompt_ids.numel() - 8 - NUM_Q
                    mask = br.map_query_mask(1, seq.shape[1], NUM_Q, seq.dtype, seq.device,
                                             num_after=after)
                hidden = br.decoder(inputs_embeds=seq, attention_mask=mask).last_hidden_state
                token = int(br.causal_lm.lm_head(hidden[0, -1]).argmax())
                expected.append(token)
                seq = torch.cat([seq, embed(torch.tensor([[token]]))], dim=1)
            kept = expected[:expected.index(eos)] if eos in expected else expected
            got = seen[0][b].tolist()
            assert got[:len(kept) + 1] == expected[:len(kept) + 1]  # up to EOS, then padding
            assert answers[b] == br.codec.decode(kept)


@pytest.mark.parametrize('mode', ['frozen', 'lora', 'full'])
def test_generate_reads_the_scene_after_overfitting(mode) -> None:
    """Same question, two scenes, two answers: only the scene tells them apart. ``frozen``
    trains only the projector and map queries (LLaVA stage 1). The LLM starts at a wider
    init than Llama's 0.02, whose near-uniform random logits a LoRA of the attention cannot
    sharpen in a few steps."""
    torch.manual_seed(0)
    br = bridge(mode, llm_cfg={**LLAMA, 'initializer_range': 0.1}, lm_loss_weight=1.0,
                projector='linear')
    x = scene(2, seed=1)
    questions, answers = ['is there a crossing?'] * 2, ['yes', 'no']
    assert br.eval().generate(x, questions, max_new_tokens=4) != answers
    br.train()
    optim = torch.optim.AdamW([p for p in br.parameters() if p.requires_grad],
                              lr=3e-3 if mode == 'full' else 1e-2, weight_decay=0)
    for _ in range(40):
        _, losses = br.forward_with_text(x, questions, answers)
        optim.zero_grad()
        losses['loss_lm'].backward()
        optim.step()
    assert losses['loss_lm'] < 0.5
    assert br.eval().generate(x, questions, max_new_tokens=4) == answers
    assert br.generate(x.flip(0), questions, max_new_tokens=4) == answers[::-1]


def test_several_questions_per_scene_are_sequences_of_their_own() -> None:
    """``rows`` asks several questions about one scene: the same loss and map queries as the
    scenes repeated, one pair per row, with the queries of each scene's first row."""
    br = bridge('full', lm_loss_weight=1.0).eval()
    x = scene()
    qs, ans = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[1]], [ANSWERS[0], ANSWERS[1], ANSWERS[1]]
    with torch.no_grad():
        queries, losses = br.forward_with_text(x, qs, ans, rows=[0, 0, 1])
        rep_queries, rep = br.forward_with_text(x[[0, 0, 1]], qs, ans)
    torch.testing.assert_close(losses['loss_lm'], rep['loss_lm'], rtol=0, atol=1e-6)
    torch.testing.assert_close(queries, rep_queries[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(queries, br(x), rtol=0, atol=1e-5)
    # the loss trains the scene of every row
    x.requires_grad_()
    br.forward_with_text(x, qs, ans, rows=[0, 0, 1])[1]['loss_lm'].backward()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()
    with pytest.raises(ValueError, match=r'name every scene of the batch \(0..1\)'):
        br.forward_with_text(x, qs, ans, rows=[0, 0, 0])
    with pytest.raises(ValueError, match='2 rows for 3 questions'):
        br.forward_with_text(x, qs, ans, rows=[0, 1])


def test_an_answer_longer_than_max_answer_tokens_is_an_error() -> None:
    """Cut, 'straight' would train 'straigh', which no metric can parse."""
    br = bridge('frozen', lm_loss_weight=1.0, max_answer_tokens=8)
    x = scene(1)
    br.forward_with_text(x, ['which way?'], ['left'])
    with pytest.raises(ValueError, match=r"answer 'straight' to 'which way\?' is 9 tokens.*"
                                         r'max_answer_tokens=8 \(model.bridge'):
        br.forward_with_text(x, ['which way?'], ['straight'])
