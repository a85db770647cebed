"""The proxy's TF Serving path grammar: what is forwarded and everything that is refused."""
import pytest

from frontend.tfs import TfsPath, TfsPathError, parse_tfs_path


@pytest.mark.parametrize("path, expected", [
    ("v1/models/m", TfsPath("m")),
    ("v1/models/m:predict", TfsPath("m", verb="predict")),
    ("v1/models/m:classify", TfsPath("m", verb="classify")),
    ("v1/models/m:regress", TfsPath("m", verb="regress")),
    ("v1/models/m/metadata", TfsPath("m", metadata=True)),
    ("v1/models/m/versions/2:predict", TfsPath("m", version=2, verb="predict")),
    ("v1/models/m/versions/7/metadata", TfsPath("m", version=7, metadata=True)),
    ("v1/models/m/labels/stable:predict", TfsPath("m", label="stable", verb="predict")),
    ("v1/models/m/labels/canary", TfsPath("m", label="canary")),
])
def test_accepts_tf_serving_paths(path, expected):
    parsed = parse_tfs_path(path, model="m")
    assert parsed == expected
    assert parsed.url_path() == "/" + path
    assert parsed.method == ("POST" if expected.verb else "GET")


@pytest.mark.parametrize("path", [
    "v1/models/../other:predict",
    "v1/models/m/../../admin",
    "v1/models/./m:predict",
    "../v1/models/m:predict",
    "v1/models//m:predict",
    "v1/models/m/",
    "http://evil.example/v1/models/m:predict",
    "//evil.example/v1/models/m:predict",
    "/v1/models/m:predict",
    "v1/models/%2e%2e/m:predict",
    "v1/models/m%3Apredict",
    "v1/models/m:predict?x=1".replace("?", "\\"),
    "v1/models/m:delete",
    "v1/models/m:predict:predict",
    "v2/models/m:predict",
    "v1/model/m:predict",
    "v1/models/m/versions/x:predict",
    "v1/models/m/versions/1/labels/a:predict",
    "v1/models/m/labels/1abc:predict",
    "v1/models/m/metadata:predict",
    "v1/models/m/other",
    "v1/models",
    "v1/models/m :predict",
    "v1/models/m\x00:predict",
    "",
])
def test_refuses_everything_else(path):
    with pytest.raises(TfsPathError):
        parse_tfs_path(path, model="m")


def test_model_in_path_must_equal_the_url_model():
    with pytest.raises(TfsPathError, match="names model 'other'"):
        parse_tfs_path("v1/models/other:predict", model="m")


def test_long_paths_are_refused():
    with pytest.raises(TfsPathError):
        parse_tfs_path("v1/models/m/labels/" + "a" * 600, model="m")


def test_cache_key_distinguishes_versions_and_labels():
    keys = {parse_tfs_path(p, model="m").cache_key() for p in (
        "v1/models/m:predict", "v1/models/m/versions/1:predict", "v1/models/m/versions/2:predict",
        "v1/models/m/labels/stable:predict", "v1/models/m:classify")}
    assert len(keys) == 5
