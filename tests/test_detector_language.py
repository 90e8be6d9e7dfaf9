"""The detector that speaks: one forward gives the map losses and the answer loss, and
``predict`` answers the questions in the metainfo from the same scene tokens (issue 15)."""
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.utils import register_all_modules
from mmengine.config import Config

from tests.test_mapllava_detector import CONFIG, build_model, make_data

pytestmark = pytest.mark.usefixtures('single_thread')
QUESTIONS = ['How many lane dividers are there?', 'Is there a pedestrian crossing within 20 m?']


def ask(data: dict, questions: list, answers: list | None = None) -> dict:
    for sample, qs, ans in zip(data['data_samples'], questions, answers or questions):
        sample.set_metainfo(dict(questions=qs, answers=ans if answers else None,
                                 qa_types=['count_divider', 'crossing_near'][:len(qs)]))
    return data


def test_lm_loss_off_leaves_the_map_losses_bit_identical():
    """``lm_loss_weight=0`` (the default): questions in the metainfo change nothing."""
    plain = build_model('full')
    data = plain.data_preprocessor(make_data(batch=2), training=True)
    torch.manual_seed(1)
    ref = plain(data['inputs'], data['data_samples'], mode='loss')
    ask(data, [QUESTIONS[:1], QUESTIONS[1:]], [['3'], ['no']])
    torch.manual_seed(1)
    out = plain(data['inputs'], data['data_samples'], mode='loss')
    assert 'loss_lm' not in out and set(out) == set(ref)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


@pytest.mark.parametrize('mode', ['frozen', 'full'])
def test_one_forward_gives_map_and_answer_losses(mode):
    model = build_model(mode)
    model.bridge.lm_loss_weight = 1.0
    data = model.data_preprocessor(make_data(batch=2), training=True)
    ask(data, [QUESTIONS[:1], []], [['3'], []])  # the second sample has no question
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    assert torch.isfinite(losses['loss_lm']) and losses['loss_lm'] > 0
    losses['loss_lm'].backward()
    # the answer loss trains what feeds the LLM, and the LLM itself only when it is trained
    assert model.neck.query_tokens.grad.abs().sum() > 0
    assert model.bridge.scene_proj[0].weight.grad.abs().sum() > 0
    llm_grads = [p.grad for p in model.bridge.llm.parameters() if p.grad is not None]
    assert bool(llm_grads) == (mode == 'full')


def test_predict_answers_every_question_and_keeps_the_map():
    model = build_model('full').eval()
    data = model.data_preprocessor(make_data(batch=2), training=False)
    with torch.no_grad():
        plain = model(data['inputs'], data['data_samples'], mode='predict')
        ref = [s.pred_instances_3d.polylines.clone() for s in plain]
        for s in plain:
            del s.pred_instances_3d
        ask(data, [QUESTIONS, QUESTIONS[1:]])
        preds = model(data['inputs'], data['data_samples'], mode='predict')
    assert [len(p.pred_answers) for p in preds] == [2, 1]
    first = preds[0].pred_answers[0]
    assert first['question'] == QUESTIONS[0] and first['type'] == 'count_divider'
    assert all(isinstance(a['answer'], str) for p in preds for a in p.pred_answers)
    for p, r in zip(preds, ref):
        assert torch.equal(p.pred_instances_3d.polylines, r)
    # generation is batched over (sample, question) rows: the same answer asked alone
    single = model.bridge.generate(model._scene(data['inputs'], data['data_samples'])[1][1:],
                                   QUESTIONS[1:])
    assert single == [preds[1].pred_answers[0]['answer']]


def test_bypass_bridge_sets_no_answers():
    model = build_model('bypass').eval()
    data = ask(model.data_preprocessor(make_data(batch=1), training=False), [QUESTIONS])
    with torch.no_grad():
        preds = model(data['inputs'], data['data_samples'], mode='predict')
    assert not model.can_answer and 'pred_answers' not in preds[0]


def test_every_drawn_question_is_scored():
    """Two pairs on a sample (``LoadMapQuestions(num_questions=2)``) both count in
    ``loss_lm``: the loss differs from the first pair's alone and equals the bridge's over
    the pairs as rows of their own."""
    model = build_model('full')
    model.bridge.lm_loss_weight = 1.0
    model.eval()  # no dropout: the same scene tokens in all three forwards
    data = model.data_preprocessor(make_data(batch=2), training=True)
    ask(data, [QUESTIONS, QUESTIONS[:1]], [['3', 'no'], ['2']])
    with torch.no_grad():
        both = model(data['inputs'], data['data_samples'], mode='loss')['loss_lm']
        _, scene = model._scene(data['inputs'], data['data_samples'])
        ref = model.bridge.forward_with_text(scene[[0, 0, 1]], QUESTIONS + QUESTIONS[:1],
                                             ['3', 'no', '2'])[1]['loss_lm']
        ask(data, [QUESTIONS[:1], QUESTIONS[:1]], [['3'], ['2']])
        first = model(data['inputs'], data['data_samples'], mode='loss')['loss_lm']
    torch.testing.assert_close(both, ref, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(both, first)
    ask(data, [QUESTIONS, []], [['3'], []])
    with pytest.raises(ValueError, match='has 2 questions but 1 answers'):
        model(data['inputs'], data['data_samples'], mode='loss')


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize('into', ['encoder', 'neck', 'bridge'])
def test_lm_gradient_stops_where_asked_and_the_losses_stay(into):
    """``lm_gradient_into``: the answer loss trains the parts down to the one named and no
    deeper; the map losses and ``loss_lm`` have the same values whichever it is (the map
    queries are read before the text, the question rows from the same scene tokens)."""
    model = build_model('full')
    model.bridge.lm_loss_weight = 1.0
    model.eval()  # no dropout: the Q-Former's second pass ('neck') gives the same tokens
    data = model.data_preprocessor(make_data(batch=2), training=True)
    ask(data, [QUESTIONS, QUESTIONS[1:]], [['3', 'no'], ['yes']])
    ref = model(data['inputs'], data['data_samples'], mode='loss')
    model.lm_gradient_into = into
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    assert set(losses) == set(ref)
    for key in ref:
        torch.testing.assert_close(losses[key], ref[key], rtol=1e-5, atol=1e-6)
    losses['loss_lm'].backward(retain_graph=True)
    assert (_grad_norm(model.bev_encoder) > 0) == (into == 'encoder')
    assert (_grad_norm(model.neck) > 0) == (into in ('encoder', 'neck'))
    assert _grad_norm(model.bridge.scene_proj) > 0
    assert _grad_norm(model.map_head) == 0
    # the map losses still train the encoder and the neck through the map rows
    sum(v for k, v in losses.items() if k != 'loss_lm').backward()
    assert _grad_norm(model.bev_encoder) > 0 and _grad_norm(model.neck) > 0


def test_lm_gradient_into_names_the_bad_value():
    register_all_modules()
    cfg = Config.fromfile(CONFIG).model
    cfg.lm_gradient_into = 'backbone'
    with pytest.raises(ValueError, match="model.lm_gradient_into must be one of .*'backbone'"):
        MODELS.build(cfg)
