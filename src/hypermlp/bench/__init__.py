"""Speed and memory benchmarks: ``hypermlp bench`` or ``python -m hypermlp.bench``.

Three sections, every mixer measured side by side in one process, interleaved, every figure also
given as a ratio to softmax attention (see benchmarks/README.md for the method):

* ``layer``  (layers.py) - one mixer layer: forward and forward+backward time, peak extra memory
  and the bytes saved for the backward, at several sequence lengths;
* ``decode`` (decode.py) - per-token latency decoding with the cache against recomputing the
  whole prefix for every token;
* ``lm``     (lm.py)     - language-model training throughput and memory at matched parameter
  counts.

measure.py holds the clock and the memory probes, mixers.py which layers are built, targets.py
the targets they are judged against, report.py the tables and plots, cli.py the flags and the
run that writes bench.json, bench.md and the PNGs. ``--mixers`` picks the layer section's mixers
(``--contenders``, its first name, still works); rows name theirs in the ``mixer`` field.
"""

from .cli import build_parser, main

__all__ = ["main", "build_parser"]
