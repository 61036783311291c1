"""Encoders, score and checkpoints: shapes, formulas and clear errors."""

import math

import numpy as np
import pytest
import torch

from imposing_ros.geometry import MapNormalization
from imposing_ros.model.checkpoint import CheckpointError, load_model, save_checkpoint
from imposing_ros.model.encoders import FourierFeatures, ModelConfig, PoseEncoder, similarity
from imposing_ros.model.imposing import ImPosing, SceneMap

SMALL = ModelConfig(backbone='resnet18', dim=32, image_size=(32, 64), pose_layers=2,
                    pose_width=64)


def small_model(scenes=('a',)):
    poses = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1], [10.0, 5, 1, 0, 0, 0.6, 0.8]])
    maps = {s: SceneMap(MapNormalization.from_positions(poses[:, :3]), poses) for s in scenes}
    return ImPosing(SMALL, maps)


def test_fourier_features_formula():
    ff = FourierFeatures(11)
    x = torch.tensor([0.3, -0.1, 0.05, 0.0, 0.0, 0.6, 0.8])
    out = ff(x)
    assert out.shape == (161,) and ff.out_features == 161
    per = out.view(7, 23)
    assert torch.allclose(per[:, 0], x)
    k = 4
    assert torch.allclose(per[:, 1 + k], torch.sin(2 ** k * math.pi * x), atol=1e-5)
    assert torch.allclose(per[:, 12 + k], torch.cos(2 ** k * math.pi * x), atol=1e-5)


def test_pose_encoder_paper_shape_and_sign_invariance():
    enc = PoseEncoder(ModelConfig())
    linears = [m for m in enc.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.in_features for m in linears] == [161, 256, 256, 256]
    assert all(m.out_features == 256 for m in linears)
    poses = torch.cat([torch.rand(5, 3) - 0.5, torch.nn.functional.normalize(
        torch.randn(5, 4), dim=-1)], -1)
    flipped = torch.cat([poses[:, :3], -poses[:, 3:]], -1)
    assert torch.allclose(enc(poses), enc(flipped), atol=1e-6)
    assert enc(poses[None].expand(3, 5, 7)).shape == (3, 5, 256)


def test_similarity_is_relu_cosine():
    a, b = torch.randn(2, 8), torch.randn(5, 8)
    s = similarity(a, b)
    ref = torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1).clamp_min(0)
    assert torch.allclose(s, ref, atol=1e-6)
    assert torch.allclose(similarity(a, b[None].expand(2, 5, 8)), s, atol=1e-6)
    assert (s >= 0).all() and (s <= 1).all()


def test_image_encoder_shapes_and_backbones():
    model = small_model(('a', 'b'))
    codes = model.encode_images(torch.rand(2, 3, 32, 64), 'b')
    assert codes.shape == (2, 32)
    # one shared backbone, one head and one pose encoder per scene
    assert set(model.image_encoder.heads) == {'a', 'b'} and set(model.pose_encoders) == {'a', 'b'}
    with pytest.raises(ValueError, match='name one'):
        model.encode_images(torch.rand(1, 3, 32, 64))
    with pytest.raises(ValueError, match='unknown scene'):
        model.encode_poses(torch.zeros(1, 7), 'c')
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        model.encode_images(torch.rand(3, 32, 64), 'a')
    with pytest.raises(ValueError, match='backbone'):
        ModelConfig(backbone='vgg16')


def test_backbone_weights_from_local_file(tmp_path):
    import torchvision
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / 'resnet18.pth'
    torch.save(reference.state_dict(), path)
    model = small_model()
    model.image_encoder.load_backbone_weights(path)
    assert torch.equal(model.image_encoder.backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError):
        model.image_encoder.load_backbone_weights(tmp_path / 'missing.pth')
    torch.save({'conv1.weight': torch.zeros(1)}, tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match='do not match'):
        model.image_encoder.load_backbone_weights(tmp_path / 'bad.pth')


def test_checkpoint_round_trip(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / 'm.pt', model, seed=7, epoch=3)
    loaded, data = load_model(path)
    assert data['seed'] == 7 and data['epoch'] == 3 and data['scenes']['a']
    images = torch.rand(1, 3, 32, 64)
    model.eval()
    assert torch.allclose(loaded.encode_images(images, 'a'), model.encode_images(images, 'a'))
    assert loaded.maps['a'].normalization == model.maps['a'].normalization
    half = save_checkpoint(tmp_path / 'h.pt', model, seed=7, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded_half, _ = load_model(half)
    assert torch.allclose(loaded_half.encode_images(images, 'a'),
                          model.encode_images(images, 'a'), atol=5e-2)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match='missing.pt: file not found'):
        load_model(tmp_path / 'missing.pt')
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='corrupt.pt: not a readable checkpoint'):
        load_model(corrupt)
    empty = tmp_path / 'empty.pt'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'empty.pt: the file is empty \(0 bytes\)'):
        load_model(empty)
    path = save_checkpoint(tmp_path / 'm.pt', small_model(), seed=0)
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match='truncated.pt'):
        load_model(truncated)
    data = torch.load(path, weights_only=True)
    data['model_config']['dim'] = 16  # weights no longer fit
    torch.save(data, tmp_path / 'mismatch.pt')
    with pytest.raises(CheckpointError, match='mismatch.pt: weights do not match'):
        load_model(tmp_path / 'mismatch.pt')
    data['model_config']['colour'] = 'red'
    torch.save(data, tmp_path / 'unknown.pt')
    with pytest.raises(CheckpointError, match='unknown ModelConfig key'):
        load_model(tmp_path / 'unknown.pt')
    torch.save({'weights': 1}, tmp_path / 'foreign.pt')
    with pytest.raises(CheckpointError, match='format'):
        load_model(tmp_path / 'foreign.pt')


def test_preprocess_resizes_as_pillow_and_the_training_cache_do():
    # Training reads images the cache resized; the localizer must feed the networks the same
    # pixels. Pillow's antialiased bilinear is the reference (the cache used it before).
    from PIL import Image

    from imposing_ros.data.cache import resize_image
    from imposing_ros.model.preprocess import preprocess

    rng = np.random.default_rng(1)
    for shape, size in [((1080, 1920), (68, 120)), ((270, 480), (135, 240)),
                        ((101, 333), (68, 120)), ((50, 60), (68, 120))]:
        image = rng.integers(0, 256, (*shape, 3), np.uint8)
        image.flags.writeable = False  # as decoded images often are
        reference = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
        cached = resize_image(image, size)
        assert cached.shape == (*size, 3) and cached.dtype == np.uint8
        difference = np.abs(cached.astype(int) - reference)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.005, shape
        network_input = preprocess(image, size)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(network_input, cached / np.float32(255))


def test_preprocess_crops_to_the_model_aspect_on_request():
    from imposing_ros.model.preprocess import center_crop_box, preprocess

    assert center_crop_box(1080, 1920, (68, 120)) == (0, 7, 1080, 1906)  # 1906 / 1080 ~ 120 / 68
    assert center_crop_box(400, 100, (60, 120)) == (175, 0, 50, 100)
    image = np.zeros((100, 400, 3), np.uint8)
    image[:, 150:250] = 255  # a white centre band: the crop keeps only it (and black margins)
    stretched = preprocess(image, (50, 100))
    cropped = preprocess(image, (50, 100), crop=True)
    assert cropped.shape == stretched.shape == (1, 3, 50, 100)
    # The cropped window is 200 px wide around the centre: the band fills half of it.
    assert cropped.mean().item() == pytest.approx(0.5, abs=0.02)
    assert stretched.mean().item() == pytest.approx(0.25, abs=0.02)
