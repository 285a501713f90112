import pytest
from _subprocess import run_python

import fasttrain


def test_info_reports_build_and_runtime():
    d = fasttrain.info()
    assert d["fasttrain"] == fasttrain.__version__
    assert d["isa"] in d["isa_available"]
    assert d["isa_available"][-1] == "scalar"
    assert d["threads"] >= 1
    assert tuple(int(x) for x in d["torch"].split("+")[0].split(".")[:2]) >= (2, 4)
    assert isinstance(d["triton"], str)


def test_import_does_not_import_triton():
    r = run_python("-c", "import sys, fasttrain; fasttrain.info(); print('triton' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_import_works_without_triton_installed():
    # A meta-path hook makes `triton` unimportable, as on a machine without it.
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fasttrain, torch\n"
        "print(fasttrain.info()['triton'])\n"
        "print(fasttrain.ops.get_total_norm([torch.ones(4)]).item())\n"
    )
    r = run_python("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["not installed (pip install 'fasttrain[triton]')", "2.0"]


def test_num_threads_env_validated(monkeypatch):
    from fasttrain._ext import num_threads

    monkeypatch.setenv("FASTTRAIN_NUM_THREADS", "3")
    assert num_threads() == 3
    monkeypatch.setenv("FASTTRAIN_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="FASTTRAIN_NUM_THREADS must be a positive integer"):
        num_threads()
