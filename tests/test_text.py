"""The text task on small corpora made here: the split by file, the memmap cache, batches, the references, sampling,
the pre-caching probe against its controls, bad input, and fit/test/sample through the command line."""

import csv
import io
import math
import random
import sys

import numpy as np
import pytest
import torch

from constrained.cli import main
from constrained.measure import probes
from constrained.seeding import generator
from constrained.tasks.loaders import TrainStream
from constrained.tasks.signals import residualize
from constrained.tasks.text import Text, sample
from constrained.tasks.text.corpus import SEPARATOR, SPLITS, SplitRule
from constrained.tasks.text.references import count_bytes, reference_bpb
from constrained.tasks.text.report import report_section
from constrained.tasks.text.sample import generate
from tests.helpers import byte_model, one_line_error, write_corpus

T = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test here in one thread: on a busy 2-core machine two threads wait on each other for far longer than
    they save on these small shapes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_task(tmp_path, corpus=None, **kw) -> Text:
    args = dict(cache_dir=str(tmp_path / "cache"), T=T, batch_size=4, n_val=8, n_test=16, val_fraction=0.2,
                test_fraction=0.2)
    return Text(corpus=str(corpus if corpus is not None else tmp_path / "corpus"), **{**args, **kw})


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    return write_corpus(tmp_path / "corpus")


def expected_split(files: dict[str, bytes], rule: SplitRule, split: str) -> bytes:
    """A split's bytes read straight from the files: each in relative-path order, followed by the separator."""
    return b"".join(files[rel] + bytes([SEPARATOR]) for rel in sorted(files) if rule.split_of(rel) == split)


def test_split_is_deterministic_and_disjoint_by_file(tmp_path, corpus):
    a, b = make_task(tmp_path), make_task(tmp_path, cache_dir=str(tmp_path / "other_cache"))
    names = {s: [f.relpath for f in a.corpus.files[s]] for s in SPLITS}
    assert names == {s: [f.relpath for f in b.corpus.files[s]] for s in SPLITS}
    assert all(names.values()) and sorted(sum(names.values(), [])) == sorted(corpus)  # every file, in one split
    a.prepare_data()
    for split in SPLITS:
        data = bytes(a.corpus.data(split))
        assert data == expected_split(corpus, a.corpus.rule, split)
        for rel in corpus:  # each file's header is in its own split's bytes and in no other
            assert (f"<{rel}>".encode() in data) == (rel in names[split])
    # a file's split depends on its path alone, not on which other files are there
    for rel in sorted(corpus)[::2]:
        (tmp_path / "corpus" / rel).unlink()
    fewer = make_task(tmp_path, val_fraction=0.2, test_fraction=0.2)
    for split in SPLITS:
        assert [f.relpath for f in fewer.corpus.files[split]] == [r for r in names[split] if r in sorted(corpus)[1::2]]


def test_memmap_batches_equal_direct_reads(tmp_path, corpus):
    task = make_task(tmp_path)
    for split in ("train", "test"):
        batch = task.make_batch(generator(7, 1), 12, split)
        direct = expected_split(corpus, task.corpus.rule, split)
        for s, x, y in zip(batch["starts"].tolist(), batch["inputs"], batch["targets"]):
            window = list(direct[s:s + T + 1])
            assert x.tolist() == window[:-1] and y.tolist() == window[1:]
        assert batch["loss_mask"].all() and batch["inputs"].dtype == torch.long


def test_batches_identical_across_resume_and_different_across_ranks(tmp_path, corpus):
    task = make_task(tmp_path)
    stream = iter(TrainStream(task, 0, rank=0))
    uninterrupted = [next(stream) for _ in range(6)]
    bins = {s: (task.corpus.folder / f"{s}.bin").stat().st_mtime_ns for s in SPLITS}
    # a killed run restarts in a new process: a new task finds the cache, and the stream resumes at step 3
    resumed_task = make_task(tmp_path)
    assert resumed_task.corpus.ready and resumed_task.corpus.folder == task.corpus.folder
    resumed = iter(TrainStream(resumed_task, 3, rank=0))
    for step in range(3, 6):
        batch = next(resumed)
        assert torch.equal(batch["inputs"], uninterrupted[step]["inputs"]), step
    assert bins == {s: (task.corpus.folder / f"{s}.bin").stat().st_mtime_ns for s in SPLITS}  # reused, not rewritten
    assert not torch.equal(task.train_batch(3, 0)["starts"], task.train_batch(3, 1)["starts"])
    assert not torch.equal(task.train_batch(3, 0)["starts"], task.train_batch(4, 0)["starts"])


def test_references_against_a_hand_count(tmp_path, corpus):
    unigram, bigram = count_bytes(np.frombuffer(b"abcab", dtype=np.uint8))
    a, b, c = b"abc"
    assert (unigram[a], unigram[b], unigram[c], unigram.sum()) == (2, 2, 1, 5)
    assert (bigram[a, b], bigram[b, c], bigram[c, a], bigram.sum()) == (2, 1, 1, 4)
    # scored on the pairs a -> b and b -> c
    refs = reference_bpb(unigram, bigram, torch.tensor([[a, b]]), torch.tensor([[b, c]]))
    assert refs["unigram_bpb"] == pytest.approx(-(math.log2(3 / 261) + math.log2(2 / 261)) / 2)
    assert refs["bigram_bpb"] == pytest.approx(-(math.log2(3 / 258) + math.log2(2 / 257)) / 2)
    # counted across chunk borders as in one piece
    data = np.frombuffer(bytes(random.Random(1).choice(b"xyz") for _ in range(1000)), dtype=np.uint8)
    import constrained.tasks.text.references as references

    whole = count_bytes(data)
    references.CHUNK, old = 7, references.CHUNK
    try:
        chunked = count_bytes(data)
    finally:
        references.CHUNK = old
    assert all(np.array_equal(x, y) for x, y in zip(whole, chunked))
    # the task's counts are those of its train split's bytes
    task = make_task(tmp_path)
    train = np.frombuffer(expected_split(corpus, task.corpus.rule, "train"), dtype=np.uint8)
    assert all(np.array_equal(x, y) for x, y in zip(task.corpus.counts(), count_bytes(train)))


def test_future_signal_is_future_bytes_residualized_on_the_current_byte(tmp_path, corpus):
    task = make_task(tmp_path)
    batch = task.make_batch(generator(3), 8, "train")
    rows, z = task.future_signal(batch)
    n = T + 1 - 4  # positions t with byte t + 4 inside the window
    assert rows[:, :n].all() and not rows[:, n:].any() and z.shape == (8 * n, 3 * 256)
    data = torch.cat([batch["inputs"], batch["targets"][:, -1:]], dim=1)
    raw = torch.cat([torch.nn.functional.one_hot(data[:, k:k + n], 256) for k in (2, 3, 4)], -1).reshape(8 * n, -1)
    now = torch.nn.functional.one_hot(batch["inputs"][:, :n], 256).reshape(8 * n, -1)
    torch.testing.assert_close(z, residualize(raw.float(), now.float()), atol=1e-5, rtol=0)


def test_sampling_is_deterministic_greedy_and_with_a_seed():
    torch.manual_seed(0)
    net = byte_model(n_ctx=T, d_model=16, n_layers=1)
    greedy = generate(net, b"abc", 20)
    assert greedy == generate(net, b"abc", 20) and len(greedy) == 20
    context = list(b"abc")
    for _ in range(20):  # greedy: each byte the argmax given the last T bytes
        context.append(int(net(torch.tensor([context[-T:]]))[0, -1].argmax()))
    assert bytes(context[3:]) == greedy
    drawn = generate(net, b"abc", 40, temperature=1.0, seed=3)
    assert drawn == generate(net, b"abc", 40, temperature=1.0, seed=3)
    assert drawn != generate(net, b"abc", 40, temperature=1.0, seed=4)
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(net, b"x" * (T + 1), 5)


def test_sample_max_bytes_has_an_upper_bound(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "any.ckpt"), "--max-bytes", str(sample.MAX_BYTES + 1)]) == 2
    assert one_line_error(capsys) == (f"constrained sample: error: --max-bytes must be between 1 and "
                                      f"{sample.MAX_BYTES}, got {sample.MAX_BYTES + 1}")
    with pytest.raises(ValueError, match="sample_bytes must be between 0"):
        make_task(tmp_path, sample_bytes=sample.MAX_BYTES + 1)


def test_sample_prints_each_byte_as_it_is_drawn(monkeypatch):
    out, printed = io.StringIO(), []

    class Writes_a(torch.nn.Module):
        """A model that always predicts "a" and notes, at each step, how much has been printed."""

        n_ctx = 8

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            printed.append(len(out.getvalue()))
            logits = torch.zeros(*x.shape, 256)
            logits[..., ord("a")] = 1.0
            return logits

    monkeypatch.setattr(sample, "load_net", lambda path: Writes_a())
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["sample", "model.ckpt", "--prompt", "x", "--max-bytes", "5"]) == 0
    assert printed == [0, 1, 2, 3, 4] and out.getvalue() == "aaaaa\n"


def planted_corpus(folder, shuffled: bool, seed: int = 1) -> None:
    """Triples (a, r, g(a)): a and r from 8 letters, g(a) one of 4 digits, so the byte two after an `a` is a
    function of it. A letter in a's place and one in r's look alike: only the context (the byte before) says
    whether the byte two ahead is g(letter), so the current byte's embedding alone cannot tell. Shuffled: the
    same bytes in random order."""
    rng = random.Random(seed)
    letters, digits = b"abcdefgh", b"0123"
    g = {a: rng.choice(digits) for a in letters}
    folder.mkdir()
    for i in range(24):
        xs = []
        for _ in range(400):
            a = rng.choice(letters)
            xs += [a, rng.choice(letters), g[a]]
        if shuffled:
            rng.shuffle(xs)
        (folder / f"f{i:02d}.txt").write_bytes(bytes(xs))


@pytest.mark.parametrize("shuffled", [False, True])
def test_future_byte_probe_beats_the_current_byte_control_only_on_a_planted_signal(tmp_path, shuffled):
    planted_corpus(tmp_path / "planted", shuffled)
    task = make_task(tmp_path, tmp_path / "planted", T=24, batch_size=32, n_test=256, val_fraction=0.1,
                     test_fraction=0.1)
    torch.manual_seed(1)
    net = byte_model(n_ctx=24, d_model=32, n_layers=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(200):
        batch = task.train_batch(step, 0)
        loss = task.loss(net(batch["inputs"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = task.eval_set("test")
    scores = probes.probe_scores(net, probes.random_control(net, seed=0), test, task.probe_targets(test))
    current = task.current_byte_scores(net, test)
    gain = scores["probe_future_byte_k2_last"] - current["probe_future_byte_k2_current_byte"]
    if shuffled:
        assert gain < 0.02, (scores["probe_future_byte_k2_last"], current)
    else:
        assert gain > 0.05, (scores["probe_future_byte_k2_last"], current)
        assert scores["probe_future_byte_k2_last"] > scores["probe_future_byte_k2_last_control"] + 0.05


def _error(tmp_path, corpus, **kw) -> str:
    with pytest.raises(ValueError) as e:
        make_task(tmp_path, corpus, **kw).prepare_data()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_bad_corpus_is_named_in_one_line(tmp_path):
    assert "does not exist" in _error(tmp_path, tmp_path / "missing") and "missing" in _error(tmp_path,
                                                                                               tmp_path / "missing")
    assert "no file matches" in _error(tmp_path, f"{tmp_path}/*.nothing")
    (tmp_path / "empty").mkdir()
    assert "is empty (0 files" in _error(tmp_path, tmp_path / "empty")
    (tmp_path / "blank").mkdir()
    for i in range(3):
        (tmp_path / "blank" / f"{i}.txt").write_bytes(b"")
    assert "is empty (3 files, 0 bytes)" in _error(tmp_path, tmp_path / "blank")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "a.txt").write_bytes(b"abc")
    assert "fewer than one sequence" in _error(tmp_path, tmp_path / "tiny")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_bytes(b"abcdefgh" * 100)
    message = _error(tmp_path, tmp_path / "one")
    assert "is empty: none of the 1 files" in message and "split" in message
    assert "must be < 1" in _error(tmp_path, tmp_path / "one", val_fraction=0.5, test_fraction=0.5)


def test_a_corpus_of_one_file_is_split_by_position(tmp_path, capsys):
    rng = random.Random(0)
    text = bytes(rng.choice(b"abcdefgh \n") for _ in range(1000))
    (tmp_path / "book.txt").write_bytes(text)
    task = make_task(tmp_path, corpus=tmp_path / "book.txt")  # val and test 0.2 each
    task.prepare_data()
    parts = {s: bytes(task.corpus.data(s)) for s in SPLITS}
    assert parts == {"train": text[:600] + b"\0", "val": text[600:800] + b"\0", "test": text[800:] + b"\0"}
    assert "by position" in task.corpus.meta["rule"]
    batch = task.make_batch(generator(0, 0), 4, "val")
    assert all(bytes(row.tolist()) in parts["val"] for row in batch["inputs"])
    run = ["--trainer.default_root_dir", str(tmp_path / "run"), "--data.init_args.corpus", str(tmp_path / "book.txt"),
           "--data.init_args.cache_dir", str(tmp_path / "cache")]
    assert main(["fit", *CLI, *run]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    (tmp_path / "binary.txt").write_bytes(text[:500] + b"\0" + text[500:])
    with pytest.raises(ValueError, match=r"binary.txt holds a NUL byte at offset 500: a binary file"):
        make_task(tmp_path, corpus=tmp_path / "binary.txt").prepare_data()
    (tmp_path / "short.txt").write_bytes(text[:60])
    with pytest.raises(ValueError, match=r"split 'val' has 13 bytes .* fewer than one sequence .*by position"):
        make_task(tmp_path, corpus=tmp_path / "short.txt")


def test_a_split_emptied_by_binary_files_leaves_nothing_in_the_cache(tmp_path, corpus):
    rule = SplitRule(0.2, 0.2)
    for rel in corpus:
        if rule.split_of(rel) == "val":  # every val file is binary: the split is empty once they are skipped
            (tmp_path / "corpus" / rel).write_bytes(b"\0\1\2" * 50)
    task = make_task(tmp_path)  # by the listing alone, val has files
    with pytest.raises(ValueError, match=r"split 'val' is empty: .* \(\d+ binary files skipped\)"):
        task.prepare_data()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{task.corpus.name}.lock"]


def test_an_unreadable_cache_is_named_before_training(tmp_path, corpus):
    make_task(tmp_path).prepare_data()
    folder = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    meta = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(meta[:20])
    with pytest.raises(ValueError, match="cache .* is unreadable .*delete that folder"):
        make_task(tmp_path)
    (folder / "meta.json").write_text(meta)
    with (folder / "train.bin").open("r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=r"unreadable \(train.bin has 10 bytes, meta.json says \d+\)"):
        make_task(tmp_path)
    (tmp_path / "file_cache").write_text("")
    with pytest.raises(ValueError, match="cache_dir: .* is a file"):
        make_task(tmp_path, cache_dir=str(tmp_path / "file_cache"))


def test_report_section_puts_references_and_controls_beside_every_variant(tmp_path):
    def record(variant, seed, bpb):
        metrics = {"test/bpb": bpb, "test/unigram_bpb": 4.5, "test/bigram_bpb": 3.4}
        for k in (2, 3, 4):
            metrics.update({f"test/probe_future_byte_k{k}_last": 0.3, f"test/probe_future_byte_k{k}_last_control": 0.1,
                            f"test/probe_future_byte_k{k}_current_byte": 0.2})
        return {"variant": variant, "seed": seed, "metrics": metrics, "folder": None}

    records = [record("baseline", s, 2.0 + 0.1 * s) for s in range(2)] + [record("myopic", 0, 2.5)]
    text = "\n".join(report_section(records, tmp_path).lines)
    assert "| baseline | 2.0500 ± 0.0707 (n=2) | 4.5000 ± 0.0000 (n=2) | 3.4000 ± 0.0000 (n=2) | -1.3500" in text
    assert "| myopic | 4 | 0.3000 ± 0.0000 (n=1) | 0.1000 ± 0.0000 (n=1) | 0.2000 ± 0.0000 (n=1) | 0.1000" in text


CLI = ["--config", "configs/text/base.yaml", "--config", "configs/text/baseline.yaml", "--trainer.max_steps", "4",
       "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false", "--model.init_args.d_model", "16", "--model.init_args.n_layers", "1",
       "--model.init_args.n_heads", "2", "--model.init_args.warmup_steps", "1", "--data.init_args.T", str(T),
       "--data.init_args.batch_size", "4", "--data.init_args.n_val", "8", "--data.init_args.n_test", "16",
       "--data.init_args.val_fraction", "0.2", "--data.init_args.test_fraction", "0.2",
       "--data.init_args.sample_prompt", "ab", "--data.init_args.sample_bytes", "10"]


def test_fit_test_and_sample_through_the_command_line(tmp_path, corpus, capsys):
    args = [*CLI, "--trainer.default_root_dir", str(tmp_path / "run"), "--data.init_args.corpus",
            str(tmp_path / "corpus"), "--data.init_args.cache_dir", str(tmp_path / "cache")]
    assert main(["fit", *args]) == 0
    assert main(["test", *args, "--ckpt_path", "last", "--verbose", "false"]) == 0
    with (tmp_path / "run" / "test_metrics.csv").open() as f:
        metrics = {r["metric"]: float(r["value"]) for r in csv.DictReader(f)}
    assert metrics["bpb"] == pytest.approx(metrics["loss"] / math.log(2))
    assert 0 < metrics["bigram_bpb"] < 9 and 0 < metrics["unigram_bpb"] < 8  # 256 x 256 smoothed counts on ~5 KB
    assert "probe_future_byte_k4_current_byte" in metrics
    logged = {k for row in csv.DictReader((tmp_path / "run" / "logs" / "version_1" / "metrics.csv").open())
              for k, v in row.items() if v}
    assert {"test/future_info_last", "test/reach", "test/iteration", "test/bpb", "test/bigram_bpb",
            "test/probe_future_byte_k2_last", "test/probe_future_byte_k2_last_control",
            "test/probe_future_byte_k2_current_byte"} <= logged
    assert (tmp_path / "run" / "sample.txt").read_text().startswith("ab")
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert main(["sample", ckpt, "--prompt", "ab", "--max-bytes", "10", "--temperature", "0.8", "--seed", "0"]) == 0
    assert (tmp_path / "run" / "sample.txt").read_text() == "ab" + capsys.readouterr().out  # the test's own draw
    assert main(["sample", ckpt, "--prompt", "ab", "--max-bytes", "10"]) == 0
    greedy = capsys.readouterr().out
    assert main(["sample", ckpt, "--prompt", "ab", "--max-bytes", "10"]) == 0
    assert capsys.readouterr().out == greedy
    assert main(["sample", ckpt, "--prompt", "ab", "--max-bytes", "30", "--temperature", "1", "--seed", "5"]) == 0
    drawn = capsys.readouterr().out
    assert main(["sample", ckpt, "--prompt", "ab", "--max-bytes", "30", "--temperature", "1", "--seed", "5"]) == 0
    assert capsys.readouterr().out == drawn
    assert main(["sample", ckpt, "--prompt", "x" * (T + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"constrained sample: error: --prompt is {T + 1} bytes, longer than the model's context of {T} bytes"
    assert main(["sample", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt not found" in capsys.readouterr().err


def test_a_missing_corpus_stops_the_command_line_before_training(tmp_path, capsys):
    assert main(["fit", *CLI, "--trainer.default_root_dir", str(tmp_path / "run"), "--data.init_args.corpus",
                 str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"error: data.init_args.corpus: {tmp_path / 'nowhere'} does not exist" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
