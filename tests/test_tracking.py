from emoe import tracking


def test_redact_hides_credentials_named_or_credential_like(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcd")
    monkeypatch.setenv("WANDB_API_KEY", "k-1234567890")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # named like a token, but a short flag: left alone
    text = "hf_abcd k-1234567890 hunter2hunter2 false"
    assert tracking.redact(text) == "*** *** *** false"
    assert tracking.param_value(["a", "hunter2hunter2"]) == "a,***"
