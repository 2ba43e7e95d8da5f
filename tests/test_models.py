"""The DG-Net networks: exact paper parameter counts, shapes per profile, layouts, weights, teacher."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torchvision
from torch import nn

from dgnet.errors import ConfigError
from dgnet.models import backbone as backbone_module
from dgnet.models.appearance import AppearanceEncoder, IdHead, appearance_code
from dgnet.models.backbone import PretrainedWeightsMissingWarning, ResNetTrunk, build_trunk
from dgnet.models.config import ModelConfig
from dgnet.models.decoder import Decoder
from dgnet.models.dgnet import DGNet
from dgnet.models.discriminator import MultiScaleDiscriminator
from dgnet.models.structure import StructureEncoder, to_grayscale
from dgnet.models.summary import count_parameters, summarize
from dgnet.models.teacher import FrozenTeacher, ReidBaseline
from dgnet.profiles import MODEL_PROFILES as PROFILES
from dgnet.profiles import get_profile


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_meta() -> DGNet:
    """The paper configuration on the meta device: real structure, no memory, no compute."""
    with torch.device("meta"):
        return DGNet(get_profile("paper", pretrained=False))


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return get_profile("tiny")


# --- configuration -------------------------------------------------------------------------


def test_profiles_differ_only_in_numbers() -> None:
    paper = ModelConfig()
    assert PROFILES["paper"] == paper
    assert (paper.backbone, paper.image_height, paper.image_width) == ("resnet50", 256, 128)
    assert (paper.structure_channels, paper.embedding_dim, paper.discriminator_scales) == (128, 512, 3)
    choices = {"backbone", "pretrained", "require_pretrained", "pretrained_path"}  # not sizes
    for name, cfg in PROFILES.items():
        for field in dataclasses.fields(ModelConfig):
            mine, theirs = getattr(cfg, field.name), getattr(paper, field.name)
            if mine == theirs or field.name in choices:
                continue
            assert type(mine) is type(theirs), (name, field.name)
            values = mine if isinstance(mine, tuple) else (mine,)
            numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            assert numbers, (name, field.name)


def test_get_profile_overrides_and_errors() -> None:
    cfg = get_profile("cpu", num_classes=10, decoder_widths=[24])
    assert cfg.num_classes == 10 and cfg.decoder_widths == (24,)
    assert PROFILES["cpu"].num_classes != 10  # the profile itself is untouched
    with pytest.raises(ConfigError, match="'nope'"):
        get_profile("nope")
    with pytest.raises(ConfigError, match="bogus"):
        get_profile("tiny", bogus=1)
    with pytest.raises(ConfigError, match="backbone"):
        get_profile("tiny", backbone="vgg16")
    with pytest.raises(ConfigError, match="image_height"):
        get_profile("tiny", image_height=70)
    with pytest.raises(ConfigError, match="appearance_rows"):
        get_profile("tiny", appearance_rows=5)
    with pytest.raises(ConfigError, match="discriminator_scales"):
        get_profile("tiny", image_height=32, image_width=16, appearance_rows=2)
    with pytest.raises(ConfigError, match="aspp_dilations"):
        get_profile("tiny", aspp_dilations=(3, 6, 9))
    with pytest.raises(ConfigError, match="structure_widths"):
        get_profile("tiny", structure_widths=(4, 8))
    with pytest.raises(ConfigError, match="structure_downsamplings"):
        get_profile("tiny", structure_downsamplings=3)
    with pytest.raises(ConfigError, match="decoder_widths"):  # one width per upsampling
        get_profile("tiny", structure_downsamplings=1, decoder_widths=(8, 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_classes = 3  # type: ignore[misc]


@pytest.mark.parametrize("downsamplings", [1, 2])
def test_structure_downsamplings_set_the_code_size_and_the_upsamplings(downsamplings: int) -> None:
    widths = (8,) * downsamplings
    cfg = get_profile("tiny", pretrained=False, structure_downsamplings=downsamplings, decoder_widths=widths)
    model = DGNet(cfg).eval()
    x = torch.randn(2, 3, cfg.image_height, cfg.image_width)
    with torch.no_grad():
        structure = model.structure_encoder(x)
        image = model.decode(structure, model.appearance_encoder(x).code)
    stride = 2**downsamplings
    assert cfg.structure_stride == stride
    assert structure.shape[2:] == (cfg.image_height // stride, cfg.image_width // stride)
    assert len(model.decoder.upsample) == downsamplings
    assert image.shape == x.shape
    assert PROFILES["paper"].structure_downsamplings == 2  # the paper's 64x32 code of a 256x128 image


# --- exact paper parameter counts ----------------------------------------------------------


def test_paper_parameter_counts(paper_meta: DGNet) -> None:
    decoder = paper_meta.decoder
    mlps = [*decoder.mapping.scale_mlps, *decoder.mapping.bias_mlps]
    assert n_params(paper_meta.structure_encoder) == 380_544
    assert count_parameters(decoder.body_parameters()) == 1_455_555
    assert len(mlps) == 8
    assert all(n_params(mlp) == 1_443_072 for mlp in mlps)
    assert n_params(decoder.mapping) == 11_544_576
    assert n_params(paper_meta.structure_encoder) + n_params(decoder) == 13_380_675
    assert n_params(paper_meta.discriminator) == 1_025_571
    assert n_params(paper_meta.appearance_encoder.primary_head) == 1_435_375
    assert n_params(paper_meta.appearance_encoder.fine_head) == 1_435_375
    assert n_params(paper_meta.appearance_encoder.trunk) == 23_508_032


def test_parameter_groups_partition_the_model(paper_meta: DGNet) -> None:
    groups = paper_meta.parameter_groups()
    all_ids = [id(p) for g in dataclasses.astuple(groups) for p in g]
    assert len(all_ids) == len(set(all_ids)) == len(list(paper_meta.parameters()))
    assert count_parameters(groups.generator) == 13_380_675
    assert count_parameters(groups.discriminator) == 1_025_571
    assert count_parameters(groups.id_heads) == 2 * 1_435_375


def test_summary_lists_counts_and_shapes() -> None:
    text = summarize(get_profile("paper"))
    for expected in ("23,508,032", "1,435,375", "380,544", "1,455,555", "1,443,072", "11,544,576",
                     "13,380,675", "1,025,571", "128 x 64 x 32", "8192", "3 x 256 x 128"):  # fmt: skip
        assert expected in text


# --- shapes ----------------------------------------------------------------------------------


def test_paper_shapes_on_meta(paper_meta: DGNet) -> None:
    model = paper_meta.eval()
    x = torch.zeros(2, 3, 256, 128, device="meta")
    structure, appearance = model.encode(x)
    assert structure.shape == (2, 128, 64, 32)
    assert appearance.code.shape == (2, 8192)
    assert appearance.feature.shape == (2, 2048)
    assert appearance.primary_logits.shape == appearance.fine_logits.shape == (2, 751)
    assert appearance.primary_embedding.shape == appearance.fine_embedding.shape == (2, 512)
    assert model.appearance_encoder.trunk(x).shape == (2, 2048, 16, 8)
    assert model.decode(structure, appearance.code).shape == (2, 3, 256, 128)
    assert [tuple(o.shape) for o in model.discriminator(x)] == [(2, 1, 64, 32), (2, 1, 32, 16), (2, 1, 16, 8)]


@pytest.mark.parametrize("profile", ["cpu", "tiny"])
def test_small_profile_shapes(profile: str) -> None:
    torch.manual_seed(0)
    cfg = get_profile(profile, pretrained=False)
    model = DGNet(cfg).eval()
    h, w = cfg.image_height, cfg.image_width
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        structure, appearance = model.encode(x)
        image = model.decode(structure, appearance.code)
        patches = model.discriminator(x)
    stride = cfg.structure_stride
    assert structure.shape == (2, cfg.structure_channels, h // stride, w // stride)
    assert appearance.code.shape == (2, cfg.appearance_code_dim)
    assert image.shape == x.shape
    assert len(patches) == cfg.discriminator_scales
    assert [tuple(p.shape[2:]) for p in patches] == [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16)]


def test_structure_encoder_sees_grayscale_only(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(tiny_cfg)
    x = torch.randn(2, 3, 64, 32)
    gray = x.mean(1, keepdim=True)
    assert torch.equal(to_grayscale(x), gray)
    # Images with the same channel mean but different colours give the same structure code.
    recoloured = x + torch.tensor([1.0, -2.0, 1.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(encoder(x), encoder(recoloured), atol=1e-5)
        assert torch.allclose(encoder(x), encoder(gray))


def test_appearance_code_layout_is_channel_major() -> None:
    # Channel c, row h holds the value 10*c + h everywhere in its row band: pooling keeps it.
    c, rows = 5, 4
    fmap = (10 * torch.arange(c).view(1, c, 1, 1) + torch.arange(rows).view(1, 1, rows, 1)).float()
    fmap = fmap.repeat_interleave(2, dim=2).expand(1, c, 2 * rows, 3)  # 8 x 3 map, 2 rows per band
    code = appearance_code(fmap, rows)
    assert code.shape == (1, c * rows)
    for channel in range(c):
        for h in range(rows):
            assert code[0, rows * channel + h] == 10 * channel + h


def test_id_head_structure() -> None:
    head = IdHead(32, 8, 5, dropout=0.75)
    kinds = (nn.Linear, nn.BatchNorm1d, nn.Dropout, nn.Linear)  # BatchNorm1d: dgnet's grouped one
    children = list(head.children())
    assert len(children) == 4 and all(isinstance(m, k) for m, k in zip(children, kinds, strict=True))
    assert head.dropout.p == 0.75
    head.eval()
    logits, embedding = head(torch.randn(4, 32))
    assert logits.shape == (4, 5) and embedding.shape == (4, 8)
    # The embedding is the post-BN vector (no ReLU): it has negative entries.
    assert (embedding < 0).any()
    encoder = AppearanceEncoder(get_profile("tiny"))
    assert encoder.primary_head.dropout.p == 0.5 and encoder.fine_head.dropout.p == 0.75


def test_adain_slice_k_drives_block_k(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    decoder = Decoder(tiny_cfg).eval()
    code = torch.randn(1, tiny_cfg.appearance_code_dim, requires_grad=True)
    params = decoder.mapping(code)
    assert len(params) == tiny_cfg.decoder_residual_blocks
    size = tiny_cfg.adain_slice_dim
    for k, (scales, biases) in enumerate(params):
        assert scales.shape == biases.shape == (1, 2 * tiny_cfg.structure_channels)
        (grad,) = torch.autograd.grad((scales.sum() + biases.sum()), code, retain_graph=True)
        nonzero = grad[0].abs() > 0
        assert nonzero[k * size : (k + 1) * size].any()
        assert not nonzero[: k * size].any() and not nonzero[(k + 1) * size :].any()


def test_adain_uses_scale_as_is() -> None:
    from dgnet.models.layers import adain

    x = torch.randn(2, 3, 4, 4)
    zero = torch.zeros(2, 3)
    bias = torch.full((2, 3), 0.7)
    # A zero scale wipes the normalised content (it would not with 1 + scale).
    assert torch.allclose(adain(x, zero, bias), torch.full_like(x, 0.7))


def test_discriminator_init_and_scales(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    cfg = get_profile("tiny", discriminator_widths=(32, 64), discriminator_residual_blocks=4)
    d = MultiScaleDiscriminator(cfg)
    weights = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in d.modules())
    assert len(d(torch.randn(1, 3, 64, 32))) == 3


# --- backbone weights --------------------------------------------------------------------------


def test_last_stage_has_stride_one() -> None:
    for name in ("resnet18", "resnet50"):
        with torch.device("meta"):
            trunk = ResNetTrunk(name)
        assert trunk(torch.zeros(1, 3, 256, 128, device="meta")).shape[2:] == (16, 8)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_narrow_trunk_halves_every_stage(name: str) -> None:
    wide, narrow = ResNetTrunk(name), ResNetTrunk(name, width=32)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        wide_convs = [m.out_channels for m in getattr(wide, stage).modules() if isinstance(m, nn.Conv2d)]
        narrow_convs = [m.out_channels for m in getattr(narrow, stage).modules() if isinstance(m, nn.Conv2d)]
        assert narrow_convs == [c // 2 for c in wide_convs]  # same depth, half the channels
    assert narrow.out_channels == wide.out_channels // 2
    x = torch.randn(2, 3, 64, 32)
    assert narrow(x).shape == (2, narrow.out_channels, 4, 2)  # last stage still at stride 1
    conv = narrow.layer2[0].conv2  # 3x3 in both block types; torchvision's init: kaiming normal, fan_out
    std, fan_out = conv.weight.std().item(), conv.out_channels * 9
    assert abs(std - (2 / fan_out) ** 0.5) < 0.2 * (2 / fan_out) ** 0.5


def test_backbone_width_sets_the_codes_and_refuses_imagenet_weights() -> None:
    cfg = get_profile("cpu", num_classes=10, backbone_width=32, pretrained=False)
    assert cfg.backbone_channels == 256 and cfg.appearance_code_dim == 1024
    assert get_profile("paper").backbone_channels == 2048 and get_profile("cpu").backbone_channels == 512
    with pytest.raises(ConfigError, match=r"backbone_width.*pretrained: false"):
        get_profile("cpu", backbone_width=32)  # the cpu profile looks for ImageNet weights
    with pytest.raises(ConfigError, match="backbone_width"):
        get_profile("tiny", backbone_width=20)
    tiny = get_profile("tiny", backbone_width=16)  # the whole DG-Net on a narrow trunk
    model, x = DGNet(tiny).eval(), torch.randn(2, 3, 64, 32)
    assert model.appearance_encoder(x).code.shape == (2, tiny.appearance_code_dim) == (2, 128 * 4)
    assert model(x).shape == x.shape


def test_pretrained_missing_warns_and_inits_randomly(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    cfg = get_profile("tiny", pretrained=True)
    with pytest.warns(PretrainedWeightsMissingWarning, match="no ImageNet weights"):
        trunk = build_trunk(cfg)
    assert isinstance(trunk, ResNetTrunk)
    with pytest.raises(ConfigError, match="require_pretrained"):
        build_trunk(dataclasses.replace(cfg, require_pretrained=True))


def test_a_run_that_requires_imagenet_weights_downloads_them_through_torchvision(tmp_path, monkeypatch):
    """Online: torchvision's weights API fetches the file into the hub cache (the network mocked)."""
    import urllib.error

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv("DGNET_OFFLINE")
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append(url)
        torch.save(reference.state_dict(), dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    cfg = get_profile("tiny", pretrained=True, require_pretrained=True)
    trunk = build_trunk(cfg)
    assert fetched == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(trunk.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    build_trunk(cfg)
    assert len(fetched) == 1  # from the cache the second time
    build_trunk(dataclasses.replace(cfg, require_pretrained=False))  # never downloads: found in the cache

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    with pytest.warns(PretrainedWeightsMissingWarning, match="downloading .* failed"), \
            pytest.raises(ConfigError, match=r"Put https://.*resnet18-f37072fd\.pth as .*empty/checkpoints/"):
        build_trunk(cfg)
    monkeypatch.setenv("DGNET_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded offline"))
    with pytest.raises(ConfigError, match="none could be downloaded"):
        build_trunk(cfg)


def test_pretrained_path_is_loaded(tmp_path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading must not warn
        trunk = build_trunk(get_profile("tiny", pretrained=True, pretrained_path=str(path)))
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    with pytest.raises(ConfigError, match="pretrained_path"):
        build_trunk(get_profile("tiny", pretrained=True, pretrained_path=str(tmp_path / "missing.pth")))
    wrong = tmp_path / "not_a_resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="does not fit"):
        build_trunk(get_profile("tiny", pretrained=True, pretrained_path=str(wrong)))


def test_hub_cache_checkpoint_is_found_without_download(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None)
    filename = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / filename)
    assert backbone_module.cached_imagenet_checkpoint("resnet18") == tmp_path / "checkpoints" / filename
    trunk = build_trunk(get_profile("tiny", pretrained=True))
    assert torch.equal(trunk.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


# --- teacher -----------------------------------------------------------------------------------


def test_frozen_teacher_stays_in_eval_without_grads(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    teacher = FrozenTeacher(ReidBaseline(tiny_cfg))
    parent = nn.ModuleDict({"teacher": teacher, "other": nn.Linear(2, 2)})
    parent.train()
    teacher.train()
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())
    assert parent["other"].training
    teacher.requires_grad_(True)
    assert not any(p.requires_grad for p in teacher.parameters())
    # Even if a parent switches grads on, the teacher's forward builds no graph.
    parent.requires_grad_(True)
    x = torch.randn(3, 3, 64, 32, requires_grad=True)
    probs = teacher(x)
    assert not probs.requires_grad
    (probs.sum() + parent["other"].weight.sum()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.equal(probs, teacher(x))  # eval mode: deterministic (no dropout, running BN stats)


def test_teacher_ensemble_averages_softmax(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    members = [ReidBaseline(tiny_cfg).eval() for _ in range(3)]
    ensemble = FrozenTeacher(members)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x)[0], dim=1) for m in members]).mean(0)
    assert torch.allclose(ensemble(x), expected, atol=1e-6)
    flipped = ensemble(x.flip(3))
    assert torch.allclose(ensemble.soft_labels(x, batch_statistics=False), 0.5 * (expected + flipped),
                          atol=1e-6)
