# MapLLaVA, full size: ResNet-50 cameras -> 200x100 BEV (0.3 m cells) -> BLIP-2 Q-Former
# (32 tokens) -> frozen Vicuna-7B (bf16) -> 50 map queries -> 6-layer MapTR decoder.
# Pretrained weights: torchvision ResNet-50, the Q-Former of Salesforce/blip2-opt-2.7b and
# lmsys/vicuna-7b-v1.5 (hub ids or local folders; set HF_HUB_OFFLINE=1 with a filled cache
# on machines without internet).

num_classes = 3  # divider, ped_crossing, boundary (class_names: dataset base)
point_cloud_range = [-15.0, -30.0, -10.0, 15.0, 30.0, 10.0]
bev_size = (200, 100)  # (bev_h along y, bev_w along x)
bev_channels = 80
qformer_path = 'Salesforce/blip2-opt-2.7b'
llm_path = 'lmsys/vicuna-7b-v1.5'
qformer_width = 768  # BLIP-2 Q-Former hidden size (fixed by the checkpoint)
embed_dims = 256

model = dict(
    type='MapLLaVA',
    # how deep the answer loss (bridge.lm_loss_weight > 0) trains: 'encoder' (every part),
    # 'neck' (Q-Former and bridge) or 'bridge' (the LLM bridge alone)
    lm_gradient_into='encoder',
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,  # images are loaded BGR (mmcv/cv2); torchvision weights expect RGB
        pad_size_divisor=32),
    bev_encoder=dict(
        type='BEVFusionEncoder',
        img_backbone=dict(
            type='mmdet.ResNet', depth=50, out_indices=(2, 3), frozen_stages=1,
            norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch',
            # mmengine's Pretrained, but weights missing from the file fail instead of
            # staying random (docs/pretrained_weights.md)
            init_cfg=dict(type='StrictPretrained', checkpoint='torchvision://resnet50')),
        # lift stride-16 features (800x450 inputs -> 29x50 per view)
        img_neck=dict(type='LSSFPN', in_channels=[1024, 2048], out_channels=256),
        view_transform=dict(
            type='LSSViewTransform', in_channels=256, out_channels=bev_channels,
            depth_bins=(1.0, 60.0, 0.5), downsample=2),
        pc_range=point_cloud_range,
        bev_size=bev_size,
        # memory switches: activation checkpointing (with_cp) and channels-last memory format
        # for the image backbone; gradient_checkpointing / with_cp below for the Q-Former, the
        # LLM and the map decoder (cost and saving: docs/benchmarks.md)
        with_cp=False,
        channels_last=False),
    neck=dict(
        type='QFormerNeck',
        in_channels=bev_channels,
        pretrained=qformer_path,  # encoder_hidden_size stays the checkpoint's 1408
        downsample=2,  # 100x50 = 5000 BEV memory tokens
        gradient_checkpointing=False),
    bridge=dict(
        type='LLMBridge',
        in_channels=qformer_width,
        embed_dims=embed_dims,
        num_map_queries=50,
        llm_path=llm_path,
        mode='frozen',
        dtype='bf16',
        # 'bidirectional': map queries see each other in the LLM (demo ablation:
        # a tie within noise, docs/benchmarks.md)
        map_query_attention='causal',
        gradient_checkpointing=False),
    map_head=dict(
        type='MapTRHead',
        num_classes=num_classes,
        in_channels=bev_channels,
        embed_dims=embed_dims,
        num_vec=50,
        num_pts=20,
        num_layers=6,
        num_heads=8,
        num_points=4,
        ffn_dims=512,
        dropout=0.1,
        pc_range=point_cloud_range,
        max_per_img=50,
        with_cp=False))
