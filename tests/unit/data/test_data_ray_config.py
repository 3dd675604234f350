"""``data.executor`` and ``data.ray``: the address forms accepted and rejected with a message naming the key, Ray
imported only for ``executor: ray``, and a one-line error where Ray is not installed."""

import random
import subprocess
import sys

import pytest
from pydantic import ValidationError

from lmforge.data.config import DataConfig, SourceConfig

STDLIB = [SourceConfig(kind="python-stdlib")]
WORDS = "the river of stone and a cloud over meadow with copper light in winter is quiet lantern harbor".split()


@pytest.mark.parametrize("address", [None, "auto", "127.0.0.1:6379", "head-node.example:10001",
                                     "ray://10.0.0.5:10001"])
def test_address_forms_are_accepted(address):
    assert DataConfig(sources=STDLIB, executor="ray", ray={"address": address}).ray.address == address


@pytest.mark.parametrize("settings, key, fragment", [
    ({"ray": {"address": "head-node"}}, "ray.address", "expected auto, host:port or ray://host:port"),
    ({"ray": {"address": "http://head:8265"}}, "ray.address", "expected auto, host:port or ray://host:port"),
    ({"ray": {"address": "head:port"}}, "ray.address", "expected auto, host:port or ray://host:port"),
    ({"ray": {"address": "head:6379 "}}, "ray.address", "expected auto, host:port or ray://host:port"),
    ({"ray": {"address": "local"}}, "ray.address", "expected auto, host:port or ray://host:port"),
    ({"ray": {"max_retries": -1}}, "ray.max_retries", "greater than or equal to 0"),
    ({"ray": {"workers": 2}}, "ray.workers", "Extra inputs"),
    ({"executor": "dask"}, "executor", "'local' or 'ray'"),
])
def test_bad_values_are_rejected_naming_the_key(settings, key, fragment):
    with pytest.raises(ValidationError) as err:
        DataConfig(sources=STDLIB, **settings)
    found = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.value.errors()]
    assert any(loc == key and fragment in msg for loc, msg in found), found


def test_executor_settings_do_not_change_the_plan():
    from lmforge.data.shards import plan_fingerprint, plan_shards

    local = DataConfig(sources=STDLIB)
    on_ray = DataConfig(sources=STDLIB, executor="ray", ray={"address": "auto", "max_retries": 1})
    assert plan_fingerprint(local, plan_shards(local)) == plan_fingerprint(on_ray, plan_shards(on_ray))


CURATE = (
    "import sys\n"
    "{before}"
    "from lmforge.core import progress\n"
    "from lmforge.data import DataConfig, curate\n"
    "from lmforge.errors import LmforgeError\n"
    "progress.set_enabled(False)\n"
    "cfg = DataConfig(sources=[{{'kind': 'text', 'path': sys.argv[1]}}], min_chars=1, executor=sys.argv[2])\n"
    "try:\n"
    "    curate(cfg, 1, sys.argv[3])\n"
    "except LmforgeError as exc:\n"
    "    print('error:', exc)\n"
    "print('ray imported:', 'ray' in sys.modules)\n"
)


def _curate(tmp_path, executor: str, before: str = "") -> list[str]:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        rng = random.Random(i)
        sentences = (" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(20))
        (docs / f"{i}.txt").write_text(". ".join(sentences) + ".\n")
    done = subprocess.run([sys.executable, "-c", CURATE.format(before=before), str(docs), executor,
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_local_executor_never_imports_ray(tmp_path):
    assert _curate(tmp_path, "local") == ["ray imported: False"]
    assert (tmp_path / "out" / "train.jsonl").exists()


def test_executor_ray_without_ray_installed_is_one_line_with_nothing_written(tmp_path):
    hide_ray = "sys.modules['ray'] = None  # as where Ray is not installed: importing it raises ImportError\n"
    lines = _curate(tmp_path, "ray", before=hide_ray)
    assert lines[0] == "error: data.executor: ray needs Ray, which is not installed: pip install lmforge[ray]"
    assert not (tmp_path / "out").exists()
