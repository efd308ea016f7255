"""The generation tests' shared fixture: a small GRULM trained on The Time Machine."""

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from grulm.data.sources import resolve_source
from grulm.data.text import text_to_tokens
from grulm.data.vocab import Vocab
from grulm.model import GRULM, GRUConfig

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="package")
def trained():
    """A 1×64 reset-before GRULM trained 250 Adam steps on The Time Machine, returned in
    float64 (as the textbook oracle computes).

    One thread: on a busy machine, threads contending for the cores slow this down many times.
    """
    if not (SHARED_DATA / "timemachine.txt").is_file():
        pytest.skip(f"The Time Machine is not at {SHARED_DATA}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRULM_DATA_PATH", str(SHARED_DATA))
        path = resolve_source("timemachine").path
    tokens = text_to_tokens(path.read_text(encoding="utf-8"), "d2l", "char")[:10_000]
    vocab = Vocab.build(tokens)
    ids = torch.tensor(vocab[tokens])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = GRULM(GRUConfig(vocab_size=len(vocab), hidden_size=64, init="torch"))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        B, T = 16, 16
        for _ in range(250):
            starts = torch.randint(0, len(ids) - T - 1, (B,))
            window = torch.stack([ids[s : s + T + 1] for s in starts.tolist()])  # (B, T + 1)
            logits, _ = model(window[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, len(vocab)), window[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 2.3  # it learned something: uniform is ln 28 ≈ 3.3
    return model.double().eval(), vocab
