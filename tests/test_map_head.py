"""MapTRHead, its assigner and match cost on hand-made cases (CPU, tiny sizes)."""
import pytest
import torch
from mmdet3d.registry import MODELS, TASK_UTILS
from mmengine.structures import InstanceData

from projects.MapLLaVA.mapllava.models import heads, task_modules  # noqa: F401
from projects.MapLLaVA.mapllava.models.heads import normalize_pts

NUM_PTS = 20
PC_RANGE = torch.tensor([-15.0, -30.0, 15.0, 30.0])


pytestmark = pytest.mark.usefixtures('single_thread')


def line_shifts(line: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + reversed order of an open line, padded to ``num_slots`` with junk."""
    shifts = torch.full((num_slots, NUM_PTS, 2), -1e4)
    shifts[0], shifts[1] = line, line.flip(0)
    valid = torch.zeros(num_slots, dtype=torch.bool)
    valid[:2] = True
    return shifts, valid


def ring_shifts(ring: torch.Tensor) -> torch.Tensor:
    """Every cyclic shift in both directions of a closed ring whose last point repeats the
    first: ``2 * (NUM_PTS - 1)`` orders."""
    unique = ring[:-1]
    orders = []
    for seq in (unique, unique.flip(0)):
        for s in range(len(unique)):
            rolled = seq.roll(-s, 0)
            orders.append(torch.cat([rolled, rolled[:1]]))
    return torch.stack(orders)


def square_ring() -> torch.Tensor:
    t = torch.linspace(0, 1, NUM_PTS)
    # piecewise walk around a 0.2 x 0.1 rectangle (normalized), closed
    per = 2 * (0.2 + 0.1)
    d = t * per
    x = torch.where(d < 0.2, 0.4 + d, torch.where(d < 0.3, 0.6, torch.where(
        d < 0.5, 0.6 - (d - 0.3), 0.4)))
    y = torch.where(d < 0.2, 0.3, torch.where(d < 0.3, 0.3 + (d - 0.2), torch.where(
        d < 0.5, 0.4, 0.4 - (d - 0.5))))
    ring = torch.stack([x, y], -1)
    ring[-1] = ring[0]
    return ring


def build_assigner():
    return TASK_UTILS.build(dict(type='MapHungarianAssigner'))


def preds(pts: torch.Tensor, num_classes: int = 3) -> InstanceData:
    return InstanceData(scores=torch.zeros(len(pts), num_classes), pts=pts)


def test_assigner_reversed_line_never_picks_padding():
    line = torch.stack([torch.linspace(0.1, 0.9, NUM_PTS), torch.full((NUM_PTS,), 0.5)], -1)
    shifts, valid = line_shifts(line, num_slots=4)
    # a padded slot equal to the prediction must still be ignored
    shifts[3] = line.flip(0) + 0.0
    valid[3] = False
    gt = InstanceData(labels=torch.tensor([1]), shifts=shifts[None], shifts_valid=valid[None])
    pred_pts = torch.stack([line.flip(0) + 0.01, torch.rand(NUM_PTS, 2)])
    result = build_assigner().assign(preds(pred_pts), gt)
    assert result.gt_inds.tolist() == [1, 0]
    assert result.labels.tolist() == [1, -1]
    assert result.get_extra_property('shift_inds').tolist() == [1, -1]


def test_assigner_shifted_closed_polygon():
    ring = square_ring()
    shifts = ring_shifts(ring)
    assert shifts.shape[0] == 2 * (NUM_PTS - 1)
    valid = torch.ones(len(shifts), dtype=torch.bool)
    gt = InstanceData(labels=torch.tensor([1]), shifts=shifts[None], shifts_valid=valid[None])
    for k in (5, 19 + 7):  # a forward and a reversed cyclic shift
        result = build_assigner().assign(preds(shifts[k][None] + 0.005), gt)
        assert result.get_extra_property('shift_inds').tolist() == [k]


def test_assigner_matches_each_query_to_nearest_gt():
    a = torch.stack([torch.linspace(0.1, 0.9, NUM_PTS), torch.full((NUM_PTS,), 0.2)], -1)
    b = torch.stack([torch.full((NUM_PTS,), 0.7), torch.linspace(0.1, 0.9, NUM_PTS)], -1)
    sa, va = line_shifts(a, 2)
    sb, vb = line_shifts(b, 2)
    gt = InstanceData(labels=torch.tensor([0, 2]), shifts=torch.stack([sa, sb]),
                      shifts_valid=torch.stack([va, vb]))
    pred_pts = torch.stack([torch.rand(NUM_PTS, 2), b, a.flip(0)])
    result = build_assigner().assign(preds(pred_pts), gt)
    assert result.gt_inds.tolist() == [0, 2, 1]
    assert result.labels.tolist() == [-1, 2, 0]
    assert result.get_extra_property('shift_inds').tolist() == [-1, 0, 1]


def build_head(**kwargs) -> torch.nn.Module:
    cfg = dict(type='MapTRHead', num_classes=3, in_channels=8, embed_dims=32, num_layers=2,
               num_heads=4, ffn_dims=64, dropout=0.0)
    cfg.update(kwargs)
    return MODELS.build(cfg)


def gt_metres() -> InstanceData:
    line = torch.stack([torch.linspace(-10, 10, NUM_PTS), torch.linspace(-20, 25, NUM_PTS)], -1)
    ring = ring_shifts(square_ring() * torch.tensor([30.0, 60.0]) + PC_RANGE[:2])
    s_line, v_line = line_shifts(line, len(ring))
    return InstanceData(labels=torch.tensor([0, 1]), shifts=torch.stack([s_line, ring]),
                        shifts_valid=torch.stack([v_line, torch.ones(len(ring), dtype=bool)]))


def empty_gt() -> InstanceData:
    return InstanceData(labels=torch.zeros(0, dtype=torch.long),
                        shifts=torch.zeros(0, 4, NUM_PTS, 2),
                        shifts_valid=torch.zeros(0, 4, dtype=torch.bool))


@pytest.mark.parametrize('self_attn', ['full', 'decoupled'])
def test_losses_finite_and_keyed(self_attn):
    torch.manual_seed(0)
    head = build_head(self_attn=self_attn).train()
    out = head(torch.randn(2, 8, 10, 5), torch.randn(2, 50, 32))
    assert out['cls_scores'].shape == (2, 2, 50, 3)
    assert out['pts_preds'].shape == (2, 2, 50, NUM_PTS, 2)
    losses = head.loss_by_feat(out, [gt_metres(), empty_gt()])
    assert set(losses) == {f'{p}loss_{k}' for p in ('', 'd0.') for k in ('cls', 'pts', 'dir')}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert head.cls_branches[0].layers[-1].weight.grad is not None


def test_loss_uses_the_matched_order_as_target():
    head = build_head()
    gt = gt_metres()
    target = normalize_pts(gt.shifts[0, 1], PC_RANGE)  # the reversed line
    pts = torch.rand(1, 50, NUM_PTS, 2)
    pts[0, 7] = target
    cls = torch.full((1, 50, 3), -5.0)
    gt = gt[:1]
    losses = head.loss_by_feat(dict(cls_scores=cls[None], pts_preds=pts[None]), [gt])
    loss_cls, loss_pts, loss_dir = (losses[k] for k in ('loss_cls', 'loss_pts', 'loss_dir'))
    assert loss_pts.item() == pytest.approx(0.0, abs=1e-6)
    assert loss_dir.item() == pytest.approx(0.0, abs=1e-6)
    assert loss_cls.item() > 0


def test_point_and_direction_losses_follow_maptr():
    """MapTR, ``maptr_head.py`` ``loss_single`` with ``PtsL1Loss`` / ``PtsDirCosLoss``
    (``losses/map_loss.py``), both called with ``avg_factor=num_total_pos``:

        loss_pts = w_pts * sum_{pos, points, xy} |p_norm - t_norm| / num_pos
        loss_dir = w_dir * sum_{pos, P-1 segments} (1 - cos(dp_metres, dt_metres)) / num_pos

    Two GT lines, two predictions with known offsets (metres), the other 48 queries far off.
    """
    roi_w, roi_h = 30.0, 60.0
    line_a = torch.stack([torch.linspace(-10, 10, NUM_PTS), torch.zeros(NUM_PTS)], -1)
    line_b = torch.stack([torch.full((NUM_PTS,), 5.0), torch.linspace(-20, 20, NUM_PTS)], -1)
    pred_a = line_a + torch.tensor([0.3, -0.6])  # shifted: same directions
    zigzag = 0.5 * (-1.0) ** torch.arange(NUM_PTS)
    pred_b = line_b + torch.stack([zigzag, torch.zeros(NUM_PTS)], -1)  # x alternates +-0.5 m
    sa, va = line_shifts(line_a, 2)
    sb, vb = line_shifts(line_b, 2)
    gt = InstanceData(labels=torch.tensor([0, 2]), shifts=torch.stack([sa, sb]),
                      shifts_valid=torch.stack([va, vb]))
    pts = torch.full((1, 50, NUM_PTS, 2), 0.0)
    pts[0, 3] = normalize_pts(pred_a, PC_RANGE)
    pts[0, 11] = normalize_pts(pred_b, PC_RANGE)
    cls = torch.full((1, 50, 3), -5.0)
    head = build_head()
    losses = head.loss_by_feat(dict(cls_scores=cls[None], pts_preds=pts[None]), [gt])
    loss_pts, loss_dir = losses['loss_pts'], losses['loss_dir']

    num_pos = 2
    l1_a = NUM_PTS * (0.3 / roi_w + 0.6 / roi_h)  # every point, both coordinates
    l1_b = NUM_PTS * (0.5 / roi_w)
    dy = 40.0 / (NUM_PTS - 1)  # GT segment (0, dy); predicted (+-1, dy)
    dir_b = (NUM_PTS - 1) * (1 - dy / (1 + dy ** 2) ** 0.5)  # line a keeps its directions
    assert loss_pts.item() == pytest.approx(5.0 * (l1_a + l1_b) / num_pos, rel=1e-5)
    assert loss_dir.item() == pytest.approx(0.005 * (0.0 + dir_b) / num_pos, rel=1e-4)


def test_predict_returns_metres_in_roi():
    head = build_head(max_per_img=30).eval()
    with torch.no_grad():
        results = head.predict(torch.randn(2, 8, 10, 5), torch.randn(2, 50, 32))
    assert len(results) == 2
    for res in results:
        assert res.polylines.shape == (30, NUM_PTS, 2)
        assert res.scores.shape == res.labels.shape == (30,)
        assert (res.scores[:-1] >= res.scores[1:]).all()
        assert res.labels.max() < 3
        x, y = res.polylines[..., 0], res.polylines[..., 1]
        assert x.min() >= -15 and x.max() <= 15 and y.min() >= -30 and y.max() <= 30
    # denormalization: corners of the normalized square map onto the ROI corners
    pts = torch.zeros(1, 1, 50, NUM_PTS, 2)
    pts[0, 0, 3, :, 0] = torch.linspace(0, 1, NUM_PTS)
    pts[0, 0, 3, :, 1] = torch.linspace(0, 1, NUM_PTS)
    cls = torch.full((1, 1, 50, 3), -9.0)
    cls[0, 0, 3, 2] = 9.0
    res = head.predict_by_feat(dict(cls_scores=cls, pts_preds=pts))[0]
    assert res.labels[0] == 2
    assert torch.allclose(res.polylines[0, 0], torch.tensor([-15.0, -30.0]))
    assert torch.allclose(res.polylines[0, -1], torch.tensor([15.0, 30.0]))


@pytest.mark.parametrize('self_attn', ['full', 'decoupled'])
def test_one_to_many_group(self_attn):
    torch.manual_seed(0)
    head = build_head(num_aux_vec=20, aux_repeat_k=3, self_attn=self_attn)
    bev, queries = torch.randn(1, 8, 10, 5), torch.randn(1, 50, 32)
    out = head.train()(bev, queries)
    assert out['aux_cls_scores'].shape == (2, 1, 20, 3)
    assert out['aux_pts_preds'].shape == (2, 1, 20, NUM_PTS, 2)
    losses = head.loss_by_feat(out, [gt_metres()])
    assert {'o2m.loss_cls', 'o2m.d0.loss_pts', 'loss_dir'} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # the auxiliary group is masked out: main outputs do not depend on it; test mode drops it
    out_eval = head.eval()(bev, queries)
    assert 'aux_cls_scores' not in out_eval
    assert torch.allclose(out['cls_scores'], out_eval['cls_scores'], atol=1e-5)
    assert torch.allclose(out['pts_preds'], out_eval['pts_preds'], atol=1e-5)


@pytest.fixture
def host_reads(monkeypatch):
    """Count the ways a tensor's data reaches the host (device-to-host copies and the
    synchronising reads a GPU step would wait for)."""
    counts = dict.fromkeys(('cpu', 'item', 'tolist', '__bool__'), 0)
    for name in counts:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return counts


def test_matching_reads_the_device_once_per_step(host_reads):
    """Three layers x three samples x two query groups: every cost matrix goes to the host in
    one copy, and nothing else (no ``.item()`` of the positives, no per-sample ``.cpu()``)."""
    torch.manual_seed(0)
    head = build_head(num_layers=3, num_aux_vec=20, aux_repeat_k=2)
    out = head.train()(torch.randn(3, 8, 10, 5), torch.randn(3, 50, 32))
    gts = [gt_metres(), empty_gt(), gt_metres()[:1]]
    before = dict(host_reads)
    losses = head.loss_by_feat(out, gts)
    reads = {k: host_reads[k] - before[k] for k in host_reads}
    assert reads == dict(cpu=1, item=0, tolist=0, __bool__=0)
    assert len(losses) == 2 * 3 * 3
    sum(losses.values()).backward()


def test_decoder_checkpointing_matches():
    torch.manual_seed(0)
    plain, ckpt = build_head(num_aux_vec=10).train(), build_head(num_aux_vec=10, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.train()
    calls = []
    ckpt.layers[0].ffn.register_forward_pre_hook(lambda *args: calls.append(1))
    results, inputs = [], (torch.randn(2, 8, 10, 5), torch.randn(2, 50, 32))
    for head in (plain, ckpt):
        bev, queries = (x.clone().requires_grad_() for x in inputs)
        losses = head.loss_by_feat(head(bev, queries), [gt_metres(), gt_metres()[:1]])
        sum(losses.values()).backward()
        results.append((losses, bev.grad, {n: p.grad for n, p in head.named_parameters()}))
    assert len(calls) == 2  # forward + recomputation in backward
    for key, value in results[0][0].items():
        torch.testing.assert_close(value, results[1][0][key], msg=key)
    torch.testing.assert_close(results[0][1], results[1][1])
    for name, grad in results[0][2].items():
        torch.testing.assert_close(grad, results[1][2][name], msg=name)
