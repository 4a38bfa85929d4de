"""LCPDN network pieces: CPRFL (eqs. 1-5), LTFR (eqs. 7-10), the hooked DiffusionModelUNet feature extractor and the
stage-1 prepare-batch / inferer, on tiny configurations."""

import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn

from monai_vlseg.engines import PromptedDiffusionInferer, PromptedDiffusionPrepareBatch
from monai_vlseg.nets.lcpdn import (
    CPRFL,
    LCPDN,
    LTFR,
    PromptedDiffusionUNet,
    decoder_output_block,
)

TINY_UNET = {
    "channels": [8, 16, 16],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 8,
    "resblock_updown": False,
}
TEXT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
VIS = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32,
       "patch_size": 8}  # fmt: skip


def tiny_net(**kw):
    args = dict(unet_config=TINY_UNET, text_config=TEXT, prompt_dim=16, blocks=[1, 3, 4], fusion_channels=8,
                classifier_channels=[8, 4])  # fmt: skip
    args.update(kw)
    torch.manual_seed(0)
    net = LCPDN(**args)
    # DDPM UNets zero-initialise the last conv of each res block, so a fresh UNet ignores its time embedding:
    # give those convs weights, as training would.
    for m in net.diffusion.unet.modules():
        if isinstance(m, nn.Conv2d) and m.weight.abs().sum() == 0:
            nn.init.normal_(m.weight, std=0.1)
    return net


def text_inputs(b=2, n=10):
    g = torch.Generator().manual_seed(1)
    return torch.randint(100, 1000, (b, n), generator=g), torch.ones(b, n, dtype=torch.long)


def test_cprfl_matches_equations():
    torch.manual_seed(0)
    m = CPRFL(text_dim=6, image_dim=5, embed_dim=4, time_embed_dim=3)
    text, image = torch.randn(2, 7, 6), torch.randn(2, 9, 5)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    out = m(text, image, mask)
    for b in range(2):
        n = int(mask[b].sum())
        q = text[b, :n] @ m.w_q.weight.T
        a = torch.softmax(q @ (image[b] @ m.w_k.weight.T).T / math.sqrt(4), dim=-1)  # eq. 1
        z = a @ (image[b] @ m.w_v.weight.T)
        e = (torch.tanh(z) * q).mean(0)  # eqs. 2-3
        ref = e @ m.text_proj.weight.T + m.text_proj.bias  # eq. 4
        torch.testing.assert_close(out[b], ref)


def test_ltfr_matches_equations_and_repeats_text():
    torch.manual_seed(0)
    m = LTFR(channels=4, text_dim=3, hidden_channels=5)
    img, text = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3)  # M = 15 positions, N = 4 tokens
    out = m(img, text)
    f_img = img.flatten(2).transpose(1, 2)
    t = m.text_proj(text)
    t_up = torch.cat([t, t, t, t], dim=1)[:, :15]  # replicated then truncated to M
    f_fuse = m.mlp(torch.cat([f_img, t_up], -1))  # eqs. 7-8
    lam = torch.sigmoid(m.gate(f_fuse))
    ref = (lam * f_fuse + (1 - lam) * f_img) * f_img  # eqs. 9-10
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(2, 4, 3, 5))
    # truncation: more tokens than positions
    out2 = m(img[..., :1, :2], torch.randn(2, 7, 3))
    assert out2.shape == (2, 4, 1, 2)


def test_prompt_hook_equals_shift_of_time_embedding():
    """eq. 5: the hook adds TextProj(E) to the time embedding M; same as shifting the last time-embed bias."""
    net = tiny_net()
    unet = net.diffusion.unet
    x, t = torch.randn(1, 1, 32, 32), torch.tensor([150])
    p = torch.randn(1, unet.time_embed[-1].out_features)
    with torch.no_grad():
        out = net.diffusion.run_unet(x, t, p)
        assert not unet.time_embed._forward_hooks  # removed after the pass
        unet.time_embed[-1].bias += p[0]
        ref = unet(x, t)
    torch.testing.assert_close(out, ref)
    assert (out - net.diffusion.run_unet(x, t, None)).abs().max() > 1e-6


def test_decoder_blocks_follow_guided_diffusion_numbering():
    """Paper UNet layout scaled down 32x in width, 4x in size: blocks 4, 6, 8, 12 give 1024@16, 512@32, 512@64,
    256@128 px at 256 px input in the paper; here 32@4, 16@8, 16@16, 8@32 at 64 px."""
    unet_cfg = {"channels": [8, 8, 16, 16, 32, 32], "attention_levels": [False, False, False, True, True, True],
                "num_res_blocks": 2, "num_head_channels": 8, "norm_num_groups": 8, "resblock_updown": True}  # fmt: skip
    net = LCPDN(unet_config=unet_cfg, text_config=TEXT, prompt_dim=8, fusion_channels=4,
                classifier_channels=[4, 4], timesteps=[50, 150, 250], blocks=[4, 6, 8, 12])  # fmt: skip
    with torch.no_grad():
        feats = net.extract_features(torch.rand(1, 1, 64, 64) * 2 - 1, None)
    assert [tuple(f.shape[1:]) for f in feats] == [(96, 4, 4), (48, 8, 8), (48, 16, 16), (24, 32, 32)]
    with pytest.raises(ValueError, match="decoder block 18 does not exist"):
        decoder_output_block(net.diffusion.unet, 18)


def test_features_are_hooked_activations_of_noised_inputs():
    """Reference: noise with the scheduler and the shared noise, run the UNet's own forward, hook once per t."""
    net = tiny_net(timesteps=[50, 250], early_exit=True)
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    p = torch.randn(2, net.diffusion.unet.time_embed[-1].out_features)
    with torch.no_grad():
        feats = net.extract_features(x0, p)
        noise = net.shared_noise(x0)
        torch.testing.assert_close(noise, net.shared_noise(x0))  # fixed, shared across calls and timesteps
        ref = {b: [] for b in net.blocks}
        for t in (50, 250):
            a = net.diffusion.scheduler.alphas_cumprod[t]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            mods = {b: decoder_output_block(net.diffusion.unet, b) for b in net.blocks}
            hs = [m.register_forward_hook(lambda _m, _i, o, b=b: ref[b].append(o)) for b, m in mods.items()]
            net.diffusion.run_unet(x_t, torch.tensor([t, t]), p)
            for h in hs:
                h.remove()
    for f, b in zip(feats, net.blocks):
        torch.testing.assert_close(f, torch.cat(ref[b], 1))


def test_forward_shapes_gradients_and_frozen_parts():
    net = tiny_net()
    ids, mask = text_inputs()
    net.train()
    y = net(torch.rand(2, 1, 32, 32), ids, mask)
    assert y.shape == (2, 1, 32, 32)
    y.pow(2).mean().backward()
    assert net.diffusion.cprfl.w_q.weight.grad.abs().sum() > 0  # CPRFL learns through the frozen UNet
    assert net.ltfr[0].gate.weight.grad.abs().sum() > 0 and net.classifier[0].conv.weight.grad is not None
    for frozen in (net.diffusion.unet, net.diffusion.text_encoder):
        assert all(not p.requires_grad for p in frozen.parameters())
    assert net.diffusion.vision is None  # the default image tokens are the frozen UNet's own
    assert not net.diffusion.unet.training and not net.diffusion.text_encoder.model.training
    # image alone (verify_net_in_out), and wrong input sizes give clear errors
    assert net(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="1, H, W"):
        net(torch.rand(1, 3, 32, 32))


def test_text_changes_prediction_and_ablations_build():
    net = tiny_net().eval()
    ids, mask = text_inputs()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = net(x, ids, mask)
        b = net(x, ids.flip(1), mask)
    assert (a - b).abs().max() > 1e-6
    for kw in ({"use_cprfl": False}, {"use_ltfr": False}):
        n = tiny_net(**kw)
        assert n(x, ids, mask).shape == (2, 1, 32, 32)
    assert tiny_net(use_cprfl=False).diffusion.cprfl is None


def test_stage2_loss_goes_down():
    net = tiny_net()
    ids, mask = text_inputs()
    x = torch.rand(2, 1, 32, 32)
    y = (x > 0.6).float()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x, ids, mask), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_stage1_ddpm_with_supervised_trainer_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    den = PromptedDiffusionUNet(unet_config=TINY_UNET, text_config=TEXT, prompt_dim=16, frozen_unet=False)
    ids, mask = text_inputs(4)
    data = [{"image": torch.rand(1, 32, 32), "input_ids": ids[i], "attention_mask": mask[i]} for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    before = den.unet.conv_in.conv.weight.clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=loader, network=den,
        optimizer=torch.optim.Adam([p for p in den.parameters() if p.requires_grad], lr=1e-3),
        loss_function=nn.MSELoss(), inferer=PromptedDiffusionInferer(den.scheduler),
        prepare_batch=PromptedDiffusionPrepareBatch(num_train_timesteps=1000),
    )  # fmt: skip
    trainer.run()
    assert math.isfinite(float(trainer.state.output[0]["loss"]))
    assert not torch.equal(before, den.unet.conv_in.conv.weight)
    torch.save(den.state_dict(), tmp_path / "diffusion.pt")
    net = LCPDN(unet_config=TINY_UNET, text_config=TEXT, prompt_dim=16, blocks=[1, 3, 4], fusion_channels=8,
                classifier_channels=[8, 4])  # fmt: skip
    net.load_diffusion_checkpoint(str(tmp_path / "diffusion.pt"))
    torch.testing.assert_close(net.diffusion.unet.conv_in.conv.weight, den.unet.conv_in.conv.weight)
    other = LCPDN(unet_config={**TINY_UNET, "channels": [16, 16, 16]}, text_config=TEXT, prompt_dim=16, blocks=[1],
                  fusion_channels=8, classifier_channels=[8, 4])  # fmt: skip
    with pytest.raises(ValueError, match="diffusion.pt"):
        other.load_diffusion_checkpoint(str(tmp_path / "diffusion.pt"))
    torch.save({"model": den.unet.state_dict()}, tmp_path / "bare_unet.pt")  # a bare DiffusionModelUNet
    fresh = LCPDN(unet_config=TINY_UNET, text_config=TEXT, prompt_dim=16, blocks=[1, 3, 4], fusion_channels=8,
                  classifier_channels=[8, 4])  # fmt: skip
    assert fresh.load_diffusion_checkpoint(str(tmp_path / "bare_unet.pt")) is fresh
    for k, v in den.unet.state_dict().items():
        assert torch.equal(fresh.diffusion.unet.state_dict()[k], v), k
    with pytest.warns(UserWarning, match="frozen UNet is random"):
        fresh.load_diffusion_checkpoint(str(tmp_path / "missing.pt"), required=False)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fresh.load_diffusion_checkpoint(str(tmp_path / "missing.pt"))


def test_ltfr_repeats_the_text_tokens_not_the_padding():
    """With the attention mask, LTFR repeats each text's own tokens to the M positions: as if the padding were gone."""
    torch.manual_seed(0)
    m = LTFR(channels=4, text_dim=3, hidden_channels=5)
    img, text = torch.randn(3, 4, 3, 5), torch.randn(3, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1] * 6])
    out = m(img, text, mask)
    for b, n in enumerate((3, 5, 6)):
        torch.testing.assert_close(out[b : b + 1], m(img[b : b + 1], text[b : b + 1, :n]))
    with pytest.warns(UserWarning, match="fewer than the 6 text tokens"):  # a scale smaller than the text
        m(img[..., :1, :2], text, mask)


def test_prediction_does_not_depend_on_the_padding_length():
    """A longer text_len only pads: the frozen text tower masks the padding, CPRFL averages over the real tokens and
    LTFR repeats only them, so the prediction for a text that fits is the same at text_len 10 and 34."""
    net = tiny_net().eval()
    ids, _ = text_inputs(2, 8)
    x = torch.rand(2, 1, 32, 32)

    def padded(n):
        pad = torch.zeros(2, n - 8, dtype=torch.long)
        return torch.cat([ids, pad], 1), torch.cat([torch.ones_like(ids), pad], 1)

    with torch.no_grad():
        torch.testing.assert_close(net(x, *padded(10)), net(x, *padded(34)), atol=1e-5, rtol=1e-4)


def test_cprfl_image_tokens_are_the_stage1_unets_features(tmp_path):
    """The default image tokens F^I of CPRFL: the UNet's middle-block activations of the clean image at t = 0 (a mean
    token in front, layer-normalised), read without gradients; they follow the stage-1 weights and nothing else."""
    net = tiny_net().eval()
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    ids, mask = text_inputs()
    text, tmask = net.diffusion.encode_text(ids, mask, 2, x0.device)
    unet = net.diffusion.unet
    with torch.no_grad():
        tokens = net.diffusion.image_tokens(x0)
        ref = []
        hook = unet.middle_block.register_forward_hook(lambda _m, _i, o: ref.append(o))
        unet(x0, torch.zeros(2, dtype=torch.long))
        hook.remove()
        r = ref[0].flatten(2).transpose(1, 2)
        r = torch.cat([r.mean(1, keepdim=True), r], 1)
        torch.testing.assert_close(tokens, nn.functional.layer_norm(r, r.shape[-1:]))
        assert tokens.shape == (2, 1 + 8 * 8, 16)  # 32 px / 4 = 8 px, the UNet's 16 deepest channels
        prompt_a = net.diffusion.prompt(x0, text, tmask)
    assert net.diffusion.cprfl.w_k.in_features == 16
    # another stage-1 checkpoint: other UNet weights, the same CPRFL and text tower
    state = net.diffusion.state_dict()
    torch.save(state, tmp_path / "a.pt")
    g = torch.Generator().manual_seed(5)
    other = {
        k: v + 0.05 * torch.randn(v.shape, generator=g) if k.startswith("unet.") and v.is_floating_point() else v
        for k, v in state.items()
    }  # fmt: skip
    torch.save(other, tmp_path / "b.pt")
    net.load_diffusion_checkpoint(str(tmp_path / "b.pt"))
    with torch.no_grad():
        assert (net.diffusion.image_tokens(x0) - tokens).abs().max() > 1e-2
        assert (net.diffusion.prompt(x0, text, tmask) - prompt_a).abs().max() > 1e-4
    net.load_diffusion_checkpoint(str(tmp_path / "a.pt"))
    with torch.no_grad():
        torch.testing.assert_close(net.diffusion.image_tokens(x0), tokens)
    # read, not trained through, also in stage 1 while the UNet itself trains
    den = PromptedDiffusionUNet(unet_config=TINY_UNET, text_config=TEXT, prompt_dim=16, frozen_unet=False)
    assert any(p.requires_grad for p in den.unet.parameters()) and not den.image_tokens(x0).requires_grad


def test_image_encoder_choices():
    """vision_encoder: "unet" (default), a CLIP id / folder, or an explicit "random" tower (tests only); a random
    tower's config with the default is refused rather than silently ignored."""
    with pytest.raises(ValueError, match="vision_config configures a random CLIP"):
        tiny_net(vision_config=VIS)
    with pytest.raises(ValueError, match="needs vision_config"):
        tiny_net(vision_encoder="random")
    net = tiny_net(vision_encoder="random", vision_config=VIS)
    assert net.diffusion.vision is not None and net.diffusion.cprfl.w_k.in_features == VIS["hidden_size"]
    assert tiny_net(vision_encoder=None).diffusion.vision is None  # None: the default
