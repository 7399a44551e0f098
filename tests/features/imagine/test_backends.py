"""Image engines: a real diffusers pipeline (tiny, built here) and the OpenAI Images API against
a real townsquare server on loopback, through the official client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import LiveServer, add_user, auth, free_port, make_settings
from tests.features.imagine.tiny_pipeline import build_tiny_pipeline
from townsquare.app import create_app
from townsquare.backends.diffusers_images import DiffusersImages
from townsquare.backends.fake import FakeText
from townsquare.backends.images import FakeImages, Size, build_image_backend, parse_spec
from townsquare.backends.openai_images import OpenAIImages
from townsquare.errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidField,
    InvalidRequest,
)
from townsquare.services import Services
from townsquare.settings import ImageSettings

SIZES = ["64x64", "128x96"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Iterator[DiffusersImages]:
    settings = ImageSettings(sizes=SIZES, default_size="64x64", steps=2, device="cpu")
    engine = DiffusersImages(str(tiny_dir), settings)
    yield engine
    engine.close()


def _distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a).astype(float) - np.asarray(b)).mean())


def _same(a: Image.Image, b: Image.Image) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def test_diffusers_pipeline_generates_the_size_asked_for_reproducibly(
    tiny: DiffusersImages,
) -> None:
    one = tiny.generate("a red cat", size=Size(128, 96), seed=7)
    again = tiny.generate("a red cat", size=Size(128, 96), seed=7)
    other = tiny.generate("a red cat", size=Size(128, 96), seed=8)
    assert len(one) == 1 and one[0].size == (128, 96) and one[0].mode == "RGB"
    assert _same(one[0], again[0])  # same seed: same picture
    assert not _same(one[0], other[0])
    negative = tiny.generate("a red cat", size=Size(128, 96), seed=7, negative_prompt="blue")
    assert not _same(one[0], negative[0])  # the negative prompt reaches the pipeline
    assert len(tiny.generate("a dog", size=Size(64, 64), n=2, seed=1)) == 2


def test_diffusers_remix_keeps_the_picture_at_low_strength(tiny: DiffusersImages) -> None:
    source = tiny.generate("a bike by the lake", size=Size(64, 64), seed=3)[0]
    light = tiny.edit(source, "make it blue", strength=0.2, seed=1)[0]
    heavy = tiny.edit(source, "make it blue", strength=1.0, seed=1)[0]
    assert light.size == source.size
    original = np.asarray(source).astype(float)
    assert np.abs(np.asarray(light) - original).mean() < np.abs(np.asarray(heavy) - original).mean()


def test_diffusers_checks_sizes_and_the_directory(tiny_dir: Path, tmp_path: Path) -> None:
    engine = build_image_backend(
        ImageSettings(backend=f"diffusers:{tiny_dir}", sizes=SIZES, default_size="64x64")
    )
    assert isinstance(engine, DiffusersImages) and engine.model_id == "tiny-sd"
    with pytest.raises(InvalidField, match="64x64, 128x96"):
        engine.check_size(Size(512, 512))
    engine.close()
    with pytest.raises(ConfigurationError, match=r"model_index\.json"):
        DiffusersImages(str(tmp_path), ImageSettings())
    with pytest.raises(ConfigurationError, match="multiples of 4"):
        DiffusersImages(str(tiny_dir), ImageSettings(sizes=["66x66"], default_size="66x66"))


def test_specs() -> None:
    assert parse_spec("none") == ("none", "")
    assert build_image_backend(ImageSettings()) is None  # not configured by default
    assert isinstance(build_image_backend(ImageSettings(backend="fake")), FakeImages)
    for bad in ("dall-e", "openai:http://x/v1", "diffusers:"):
        with pytest.raises(InvalidRequest):
            parse_spec(bad)


@pytest.fixture(scope="module")
def image_server(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """townsquare serving /v1/images with the tiny diffusers pipeline, on loopback."""
    settings = make_settings(
        tmp_path_factory.mktemp("image-server"),
        images={
            "backend": f"diffusers:{tiny_dir}",
            "sizes": ["256x256", "320x256"],
            "default_size": "256x256",
            "steps": 2,
            "nsfw_check": "off",
        },
    )
    services = Services.build(settings, text=FakeText())
    key = add_user(services, "image-client")
    with LiveServer(services) as server:
        yield f"{server.url}/v1", key
    asyncio.run(services.aclose())


def test_openai_backend_talks_to_a_real_images_server(image_server: tuple[str, str]) -> None:
    url, key = image_server
    settings = ImageSettings(sizes=["256x256", "320x256"], default_size="256x256", api_key=key)
    engine = OpenAIImages(f"{url}#tiny-sd", settings)
    made = engine.generate("a red bike", size=Size(320, 256), n=2, seed=5)
    assert [m.size for m in made] == [(320, 256), (320, 256)]
    again = engine.generate("a red bike", size=Size(320, 256), n=1, seed=5)
    other = engine.generate("a red bike", size=Size(320, 256), n=1, seed=6)
    # the seed travels as an extra field: the same picture, but for its (new) invisible mark
    assert _distance(made[0], again[0]) < 3 < 10 < _distance(made[0], other[0])
    remix = engine.edit(made[0], "make it blue", strength=0.5, seed=1)
    assert remix[0].size == (320, 256)
    engine.close()


def test_openai_backend_says_what_is_wrong(image_server: tuple[str, str]) -> None:
    url, key = image_server
    wrong_model = OpenAIImages(f"{url}#dall-e-3", ImageSettings(api_key=key))
    with pytest.raises(Exception, match="dall-e-3"):
        wrong_model.generate("a cat", size=Size(256, 256))
    wrong_model.close()
    nobody = OpenAIImages(f"http://127.0.0.1:{free_port()}/v1#x", ImageSettings(timeout_s=5))
    with pytest.raises(BackendUnavailable, match="did not answer"):
        nobody.generate("a cat", size=Size(256, 256))
    nobody.close()


def test_a_townsquare_can_use_another_as_its_image_engine(
    image_server: tuple[str, str], tmp_path: Path
) -> None:
    """The openai: backend behind the full path: the outer server marks with its own key."""
    url, key = image_server
    settings = make_settings(
        tmp_path,
        images={
            "backend": f"openai:{url}#tiny-sd",
            "api_key": key,
            "sizes": ["256x256"],
            "default_size": "256x256",
        },
    )
    services = Services.build(settings, text=FakeText())
    member = add_user(services, "outer-member")
    admin = add_user(services, "outer-admin", role="admin")
    with TestClient(create_app(services=services)) as client:
        made = client.post("/api/imagine", json={"prompt": "a lake"}, headers=auth(member))
        assert made.status_code == 200, made.text
        image = made.json()["data"][0]
        assert image["model"] == "tiny-sd"
        png = client.get(image["url"], headers=auth(member)).content
        found = client.post(
            "/api/provenance/detect",
            files={"file": ("x.png", png, "image/png")},
            headers=auth(admin),
        ).json()
        assert found["made_here"] and found["image"]["id"] == image["id"]
    asyncio.run(services.aclose())
