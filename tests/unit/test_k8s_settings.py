"""The Kubernetes adapter's settings, validated without the client library or an API server."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from cluster.k8s_settings import CacheSettings


@pytest.mark.parametrize("field, value", [
    ("resync_seconds", 0), ("metrics_seconds", -1.0), ("backoff_max_seconds", math.nan),
    ("request_timeout_seconds", math.inf), ("connect_timeout_seconds", "5"), ("sync_timeout_seconds", -1),
    ("page_size", 0), ("page_size", 2.5), ("namespace", ""),
])
def test_cache_settings_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CacheSettings(**{field: value})


def test_settings_and_the_watch_loop_load_without_the_kubernetes_client():
    code = ("import sys, cluster.k8s_settings, cluster.k8s_watch, cluster.k8s_render, cluster.k8s_state; "
            "print('kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
