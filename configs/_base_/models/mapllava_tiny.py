# MapLLaVA, CPU-sized: a narrow ResNet-18 camera branch, 50x25 BEV (1.2 m cells), a 2-layer
# Q-Former, a random 2-layer Llama (width 128, frozen) and a 2-layer map decoder.
# Everything trains from scratch; meant for the synthetic demo and the tests.

num_classes = 3  # divider, ped_crossing, boundary (class_names: dataset base)
# BEV grid: x (right) in [-15, 15], y (forward) in [-30, 30]; z only bounds the frustum.
point_cloud_range = [-15.0, -30.0, -10.0, 15.0, 30.0, 10.0]
bev_size = (50, 25)  # (bev_h along y, bev_w along x)
bev_channels = 64
qformer_width = 128
llm_width = 128
embed_dims = 128
num_vec = 50
num_pts_per_vec = 20

model = dict(
    type='MapLLaVA',
    # how deep the answer loss (bridge.lm_loss_weight > 0) trains: 'encoder' (every part),
    # 'neck' (Q-Former and bridge) or 'bridge' (the LLM bridge alone)
    lm_gradient_into='encoder',
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,  # images are loaded BGR (mmcv/cv2)
        pad_size_divisor=32),
    bev_encoder=dict(
        type='BEVFusionEncoder',
        img_backbone=dict(
            type='mmdet.ResNet', depth=18, base_channels=16, out_indices=(1, 2, 3),
            norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False),
        img_neck=dict(type='LSSFPN', in_channels=[32, 64, 128], out_channels=64),
        view_transform=dict(
            type='LSSViewTransform', in_channels=64, out_channels=bev_channels,
            # 30 bins up to 44.5 m: the ROI ends at ~34 m, the rest is a sink for far pixels
            depth_bins=(1.0, 46.0, 1.5), downsample=2),
        pc_range=point_cloud_range,
        bev_size=bev_size),
    neck=dict(
        type='QFormerNeck',
        in_channels=bev_channels,
        num_query_tokens=32,
        qformer_cfg=dict(
            hidden_size=qformer_width, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=2 * qformer_width, encoder_hidden_size=qformer_width,
            cross_attention_frequency=1)),
    bridge=dict(
        type='LLMBridge',
        in_channels=qformer_width,
        embed_dims=embed_dims,
        num_map_queries=num_vec,
        llm_cfg=dict(
            model_type='llama', hidden_size=llm_width, intermediate_size=4 * llm_width,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=512, max_position_embeddings=1024),
        mode='frozen',
        dtype='fp32',
        # 'bidirectional': map queries see each other in the LLM (demo ablation:
        # a tie within noise, docs/benchmarks.md)
        map_query_attention='causal'),
    map_head=dict(
        type='MapTRHead',
        num_classes=num_classes,
        in_channels=bev_channels,
        embed_dims=embed_dims,
        num_vec=num_vec,
        num_pts=num_pts_per_vec,
        num_layers=2,
        num_heads=4,
        num_points=4,
        ffn_dims=2 * embed_dims,
        dropout=0.0,
        self_attn='decoupled',  # MapTRv2-style; ~25% cheaper than 'full' on CPU
        pc_range=point_cloud_range,
        max_per_img=50))
