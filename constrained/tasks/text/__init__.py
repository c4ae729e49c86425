"""Byte-level language modelling on real text: the corpus and its cache, the task, the unigram and bigram
references, generation (`constrained sample`) and its report section."""

from constrained.tasks.text.task import Text

__all__ = ["Text"]
