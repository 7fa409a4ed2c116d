"""The Hugging Face Hub from here (issue 22): an unreachable Hub is found out once, in one connection attempt, and the
loaders then read the local cache at once or refuse in one line, instead of retrying for half a minute."""

import pytest
from conftest import hub_cache

from emoe import hub
from emoe.convert import check_model, load_model


@pytest.mark.parametrize("name, path_like", [
    ("./no/such/model", True), ("../model", True), ("/abs/model", True), ("~/models/bert", True), (".", True),
    ("a/b/c", True), ("bert base", True), ("bert-base-cased", False), ("google/bert_uncased_L-2_H-128_A-2", False)])
def test_a_name_that_is_no_hub_id_is_a_path(name, path_like):
    assert hub.looks_like_path(name) is path_like


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "~/no/such/model", "no/such/model/"])
def test_a_missing_path_is_no_such_directory(name, no_network):
    with pytest.raises(ValueError) as err:
        check_model(name)
    assert str(err.value) == f"--model {name}: no such directory"
    assert not no_network, "a path is never looked up on the Hub"


def test_a_file_is_not_a_model_directory(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.bin: not a directory"):
        check_model(str(tmp_path / "model.bin"))


def test_unreachable_is_asked_once_in_one_connection(no_network):
    assert hub.unreachable().startswith("no connection to huggingface.co:443")
    assert hub.unreachable() == hub.unreachable()
    assert no_network == [("connect", ("huggingface.co", 443))]


def test_offline_mode_needs_no_connection(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.unreachable() == "HF_HUB_OFFLINE is set"
    assert not no_network


def test_an_uncached_hub_model_is_refused_in_one_line_without_retries(no_network):
    with pytest.raises(ValueError) as err:
        check_model("bert-base-cased")
    assert str(err.value) == ("--model bert-base-cased: not in the local Hugging Face cache and the Hub is unreachable "
                              "(no connection to huggingface.co:443: Network is unreachable); use a local path or "
                              "'minilm'")
    assert len(no_network) == 1  # the one probe


def test_a_cached_hub_model_loads_offline_from_the_cache_alone(tiny_model_dir, tmp_path, monkeypatch, no_network):
    """Offline, a model in the Hugging Face cache loads at once: ``local_files_only``, no connection attempted."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(tmp_path, "org/tiny-bert", tiny_model_dir)))
    assert check_model("org/tiny-bert") == "org/tiny-bert"
    model, tokenizer = load_model("org/tiny-bert", num_labels=2)
    assert model.config.hidden_size == 32 and tokenizer("a b")["input_ids"]
    assert len(no_network) == 1  # the one probe; the loaders tried nothing


def test_an_uncached_hub_dataset_is_refused_in_one_line_without_retries(no_network):
    from emoe.data import load_task

    with pytest.raises(ValueError) as err:
        load_task("sst2")
    text = str(err.value)
    assert "\n" not in text and text.startswith("nyu-mll/glue/sst2 [train] cannot be loaded from the Hub: it is "
                                                 "unreachable (no connection to huggingface.co:443")
    assert "--data-dir demo" in text
    assert len(no_network) == 1  # the one probe: datasets, in its offline mode, tried nothing


def test_cache_only_restores_the_libraries_modes(no_network):
    import datasets.config
    from huggingface_hub import constants

    with hub.cache_only():
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert not constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE


def test_a_local_model_never_asks_the_hub(tiny_model_dir, no_network):
    model, _ = load_model(tiny_model_dir)
    assert check_model(tiny_model_dir) == tiny_model_dir and not no_network
