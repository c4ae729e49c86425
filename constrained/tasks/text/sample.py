"""Generation from a byte-level model: `constrained sample CHECKPOINT --prompt TEXT --max-bytes N
[--temperature T --seed S]` prints a continuation (greedy at temperature 0, else drawn with a seed)."""

from __future__ import annotations

import argparse
import codecs
import inspect
import math
import sys
from collections.abc import Iterator

import torch

from constrained import checkpoint
from constrained.common.eval_mode import eval_mode
from constrained.seeding import generator, stream
from constrained.tasks.text.corpus import SEPARATOR
from constrained.tasks.text.references import VOCAB

MAX_BYTES = 100_000  # one forward pass per byte: more is a typo that would run for hours, not a sample


def generate(net, prompt: bytes, max_bytes: int, temperature: float = 0.0, seed: int = 0) -> bytes:
    """max_bytes bytes after prompt (continuation), all at once."""
    return bytes(continuation(net, prompt, max_bytes, temperature, seed))


def continuation(net, prompt: bytes, max_bytes: int, temperature: float = 0.0, seed: int = 0) -> Iterator[int]:
    """max_bytes bytes after prompt, yielded one at a time as each is drawn, each predicted from the last n_ctx
    bytes: the argmax at temperature 0, else a draw from softmax(logits / temperature) with the generator
    (seed, "sample"). An empty prompt starts a document (the separator byte the corpus puts between files). The
    arguments are checked before the first byte."""
    if len(prompt) > net.n_ctx:
        raise ValueError(f"--prompt is {len(prompt)} bytes, longer than the model's context of {net.n_ctx} bytes")
    if not 1 <= max_bytes <= MAX_BYTES:
        raise ValueError(f"--max-bytes must be between 1 and {MAX_BYTES}, got {max_bytes}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}")
    return _draw(net, list(prompt) or [SEPARATOR], max_bytes, temperature, generator(seed, stream("sample")))


@torch.no_grad()
def _draw(net, context: list[int], max_bytes: int, temperature: float, gen: torch.Generator) -> Iterator[int]:
    device = next(net.parameters()).device
    with eval_mode(net):
        for _ in range(max_bytes):
            x = torch.tensor([context[-net.n_ctx:]], dtype=torch.long, device=device)
            logits = net(x)[0, -1].double().cpu()  # (256,)
            if temperature == 0:
                byte = int(logits.argmax())
            else:
                byte = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
            context.append(byte)
            yield byte


def load_net(path: str):
    """The transformer of a byte-level SequenceModel checkpoint, built from its hyper_parameters (safe load)."""
    from constrained.models.sequence_model import SequenceModel

    ckpt = checkpoint.read(path)
    hp = ckpt.get("hyper_parameters") or {}
    if hp.get("vocab_size") != VOCAB or hp.get("d_out") != VOCAB:
        raise checkpoint.CheckpointError(f"checkpoint {path} is not a byte-level model (vocab_size "
                                         f"{hp.get('vocab_size')}, d_out {hp.get('d_out')}; a text model has 256)")
    known = set(inspect.signature(SequenceModel.__init__).parameters) - {"self", "init_from"}
    model = SequenceModel(**{k: v for k, v in hp.items() if k in known})
    weights = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        model.net.load_state_dict(weights)
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"checkpoint {path}: its weights do not fit its own hyper_parameters "
                                         f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})"
                                         ) from None
    return model.net.eval()


def sample_command(argv: list[str]) -> int:
    """`constrained sample CHECKPOINT --prompt TEXT --max-bytes N`: a continuation from a text model."""
    p = argparse.ArgumentParser(prog="constrained sample",
                                description="Continue a prompt with a byte-level text model (task text).")
    p.add_argument("checkpoint", help="a text run's checkpoint, e.g. runs/text/baseline/checkpoints/last.ckpt")
    p.add_argument("--prompt", default="", help="the text to continue (UTF-8; empty: the start of a file)")
    p.add_argument("--max-bytes", type=int, default=200, help=f"bytes to generate (default 200, at most {MAX_BYTES}), "
                                                              "printed as each is drawn")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample with --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws at temperature > 0 (default 0)")
    a = p.parse_args(argv)
    try:
        if not 1 <= a.max_bytes <= MAX_BYTES:  # before the checkpoint is read
            raise ValueError(f"--max-bytes must be between 1 and {MAX_BYTES}, got {a.max_bytes}")
        net = load_net(a.checkpoint)
        drawn = continuation(net, a.prompt.encode("utf-8", "surrogateescape"), a.max_bytes, a.temperature, a.seed)
    except ValueError as e:
        print(f"constrained sample: error: {e}", file=sys.stderr)
        return 2
    # bytes decoded as they come: a character split across bytes is printed once it is whole
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for byte in drawn:
        sys.stdout.write(decoder.decode(bytes([byte])))
        sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    sys.stdout.flush()
    return 0
