"""Offline, a paper config lists every hub repository it needs before any work.

The CLI runs in this process beside an empty Hugging Face cache (``empty_cache``, as
``HF_HOME`` set to an empty directory gives a fresh interpreter; ``HF_HUB_OFFLINE`` is set
in ``conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlmbench.config import build_run_config
from dlmbench.context import RunContext
from dlmbench.errors import HubUnavailableError
from dlmbench.hub_needs import HubNeed, check_hub_needs, hub_needs
from dlmbench.plugins import build_registry, get_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
RELEASED = {"Skylion007/openwebtext", "gpt2", "t5-small", "embedded-language-flows/ELF-B-owt-torch",
            "kuleshov-group/mdlm-owt", "s-sahoo/duo", "gpt2-large"}


OFFLINE = {"HF_HUB_OFFLINE": "1"}  # whatever the user's environment says


def offline() -> RunContext:
    return RunContext.create(cache=".dlmbench-cache", device="cpu", offline=True, offline_reason="test")


def config(name: str, **over):
    return build_run_config(file=ROOT / "configs" / f"{name}.yaml", overrides=over or None)


def test_the_released_config_names_every_repository_it_reads_once():
    needs = hub_needs(config("owt-released"), build_registry(get_plugin_manager()))
    assert {n.repo for n in needs} == RELEASED and len(needs) == len(RELEASED)
    by_repo = {n.repo: n for n in needs}
    assert by_repo["Skylion007/openwebtext"].fetch() == "hf download Skylion007/openwebtext --repo-type dataset"
    assert "tokenizer" in by_repo["t5-small"].what and "T5 encoder" in by_repo["t5-small"].what
    assert by_repo["gpt2-large"].what.startswith("metric gen-ppl: evaluator")
    without = hub_needs(config("owt-released"), build_registry(get_plugin_manager()), weights=False)
    assert {n.repo for n in without} == RELEASED - {"embedded-language-flows/ELF-B-owt-torch",
                                                    "kuleshov-group/mdlm-owt", "s-sahoo/duo"}


@pytest.mark.parametrize("name, repos", [
    ("wmt14-de-en", {"wmt/wmt14", "t5-small"}),
    ("xsum", {"EdinburghNLP/xsum", "t5-small"}),
    ("owt-small", {"Skylion007/openwebtext", "gpt2", "t5-small", "gpt2-large"}),
])
def test_each_paper_config_lists_what_the_cache_lacks(empty_cache, name, repos):
    registry = build_registry(get_plugin_manager())
    with pytest.raises(HubUnavailableError) as err:
        check_hub_needs(config(name), registry, offline())
    message = str(err.value)
    assert f"needs {len(repos)} Hugging Face repositories" in message and "(test)" in message
    assert {line.split()[2] for line in message.splitlines()[1:]} == repos
    empty_cache("t5-small")  # what is cached drops out of the list
    with pytest.raises(HubUnavailableError) as err:
        check_hub_needs(config(name), registry, offline())
    left = repos - {"t5-small"}
    if len(left) == 1:  # one missing repository: one line
        (repo,) = left
        assert "\n" not in str(err.value) and f"hub repository {repo!r} is not in the local" in str(err.value)
    else:
        assert {line.split()[2] for line in str(err.value).splitlines()[1:]} == left


def test_cached_local_or_online_needs_nothing(empty_cache, tmp_path, monkeypatch):
    registry = build_registry(get_plugin_manager())
    for repo in ("wmt/wmt14",):
        empty_cache(repo, "dataset")
    empty_cache("t5-small")
    check_hub_needs(config("wmt14-de-en"), registry, offline())  # all cached: no error
    assert HubNeed(repo="wmt/wmt14", what="", kind="dataset").cached()
    assert not HubNeed(repo="wmt/wmt14", what="").cached()  # a model of that name is not cached
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok" / "gpt2").mkdir(parents=True)  # a relative directory reads like OWNER/NAME
    local = config("owt-small", task_options={"data_files": str(data), "tokenizer": "tok/gpt2"},
                   budget={"evaluator": "tok/gpt2"}, models=[{"name": "mdlm", "tokenizer": "tok/gpt2"}])
    assert hub_needs(local, registry) == []  # local files, directories: nothing from the hub
    online = RunContext.create(cache=".dlmbench-cache", device="cpu", offline=False)
    check_hub_needs(config("owt-released"), registry, online)  # online the loaders fetch


def test_the_cli_lists_them_and_exits_4_before_any_work(dlmbench, empty_cache, tmp_path):
    out = dlmbench("run", "--config", ROOT / "configs/owt-released.yaml", "--out", tmp_path / "runs",
                   "--cache", tmp_path / "cache", cwd=tmp_path, env=OFFLINE)
    assert out.returncode == 4, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("error: this run needs 7 Hugging Face repositories") and "Traceback" not in out.stderr
    assert {line.split()[2] for line in lines[1:]} == RELEASED
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()  # nothing was built


def test_validate_config_lists_the_needs_on_stderr(dlmbench, empty_cache, tmp_path):
    out = dlmbench("validate-config", "--config", ROOT / "configs/xsum.yaml", cwd=tmp_path, env=OFFLINE)
    assert out.returncode == 0 and out.stdout.lstrip().startswith("{")
    assert "needs EdinburghNLP/xsum (task xsum: dataset): hf download EdinburghNLP/xsum --repo-type dataset" \
        in out.stderr.splitlines()
