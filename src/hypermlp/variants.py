"""Variant names of the paper's controlled design study: ``Base-Feat-Rank-Tmix``, e.g. ``R-cg-q-12o``.

A variant name is a mixer name (``--mixer``, ``ModelConfig.mixer``, compare's ``mixers:``): the
registry (``hypermlp.registry.get_mixer``) turns it into a registered layer with the arguments
its letters give. Those arguments are defaults: explicit ``mixer_args`` (and budget matching's
``qk_rank``) override them.

Segments, in this order, each optional after the base, ``-`` between them:

* **Base**, one letter: ``S`` softmax attention, ``R`` ReLU(L2Norm) (registry ``relu``, or
  ``hypermlp`` when a Tmix segment is given), ``G`` GLU, the HyperGLU activation (``hyperglu``).
* **Feat**, letters in the order ``p c g``: ``p`` RoPE, ``c`` the short causal conv on the K and
  V inputs, ``g`` the two sigmoid feature gates. Absent: none of the three.
* **Rank**, one letter: ``q`` QK-side compression (``qk_rank = d/4``, ``vo_rank = d``), ``v``
  VO-side compression (``qk_rank = d``, ``vo_rank = d/4``). Absent: no compression, both ``d``
  (the full-rank softmax baseline's widths, and what the ``!`` bounds add their tables to).
* **Tmix**, digits ``1`` ``2`` then optionally ``o``: ``1`` R(1), ``2`` R(2), ``o`` the lag
  ("offset") layout; digits without ``o`` use the left layout. Absent: no sequence mixing.
  Softmax has none in this library, so ``S`` with a Tmix segment is an error.
* a trailing ``!``: the over-parameterised bound, never budget-matched (``hypermlp.budget``).

One model has one name: letters out of order, repeated or unknown are errors that name the
letter and say what to write, so ``parse_variant(name).name == name`` and
``variant_name(v.mixer, d, v.layer_args(d), v.overparameterised) == name`` (the round trip).
``LETTERS`` is the table the README section "Variant names" and ``--help`` are made from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .config import AttentionConfig, ConfigError, HyperConfig

__all__ = ["Letter", "LETTERS", "EXAMPLES", "Variant", "parse_variant", "variant_name", "looks_like_variant",
           "letter_table_markdown", "help_text"]

CONV_KERNEL = 4  # what `c` turns on: the Hyper layers' default conv kernel (docs/math.md §2.1)
BASES = {"S": "softmax", "R": "relu", "G": "hyperglu"}  # base letter -> registry name (R + Tmix: hypermlp)
FEAT_ORDER = "pcg"
RANKS = "qv"
MIX_DIGITS = "12"
LAG = "o"
BOUND = "!"

# the names of the paper's design-study tables (each parses and round-trips; tests/test_variants.py)
EXAMPLES = ("S-pc", "R-pc", "R-cg-q", "R-cg-q-12o", "G-cg-q-1o", "G-cg-q-12o", "S-c-q", "S-c-v", "R-c-q",
            "R-c-v", "R-g-q-12o", "R-12!", "R-12o!")


@dataclass(frozen=True)
class Letter:
    """One row of the letter table: what a letter (or an absent segment, letter ``""``) means."""

    segment: str  # Base | Feat | Rank | Tmix | bound
    letter: str  # "" = the segment left out
    meaning: str
    args: str  # the layer arguments it gives


LETTERS: Tuple[Letter, ...] = (
    Letter("Base", "S", "softmax attention (SDPA)", "mixer `softmax`"),
    Letter("Base", "R", "ReLU(L2Norm) readout", "mixer `relu`; `hypermlp` with a Tmix segment"),
    Letter("Base", "G", "GLU: the HyperGLU activation", "mixer `hyperglu`"),
    Letter("Feat", "p", "RoPE on q and k", "`rope=True`"),
    Letter("Feat", "c", "short causal conv on the K and V inputs", f"`conv_size={CONV_KERNEL}`"),
    Letter("Feat", "g", "the sigmoid feature gates (on q and on the readout)", "`qk_gate=True, out_gate=True`"),
    Letter("Feat", "", "no conv, no gates, no RoPE", "`conv_size=0, qk_gate=False, out_gate=False, rope=False`"),
    Letter("Rank", "q", "QK-side compression", "`qk_rank=d/4, vo_rank=d`"),
    Letter("Rank", "v", "VO-side compression", "`qk_rank=d, vo_rank=d/4`"),
    Letter("Rank", "", "no compression", "`qk_rank=d, vo_rank=d`"),
    Letter("Tmix", "1", "sequence mixing R(1), on the scores", "`mix1=True`"),
    Letter("Tmix", "2", "sequence mixing R(2), on the activated scores", "`mix2=True`"),
    Letter("Tmix", "o", "the lag (\"offset\") layout; digits without `o`: the left layout",
           "`layout=\"lag\"` (without `o`: `layout=\"left\"`)"),
    Letter("Tmix", "", "no sequence mixing (R: ReLU attention)", "`R`: mixer `relu`; `G`: `mix1=False, mix2=False`"),
    Letter("bound", "!", "the over-parameterised bound: not budget-matched, keeps its extra parameters",
           "none (budget matching leaves it alone)"),
)


def letter_table_markdown() -> str:
    """The letter table as markdown (the README section "Variant names" holds exactly this)."""
    lines = ["| segment | letter | meaning | layer arguments |", "|---|---|---|---|"]
    for row in LETTERS:
        letter = f"`{row.letter}`" if row.letter else "(absent)"
        lines.append(f"| {row.segment} | {letter} | {row.meaning} | {row.args} |")
    return "\n".join(lines)


def help_text() -> str:
    """The letter table in one paragraph, for ``--help``."""
    return ("or a variant name Base-Feat-Rank-Tmix such as R-cg-q-12o: Base S softmax, R ReLU(L2Norm), G GLU "
            "(HyperGLU); Feat p RoPE, c conv on K/V, g feature gates (none: all off); Rank q qk_rank=d/4, "
            "v vo_rank=d/4 (none: both d); Tmix 1 R(1), 2 R(2), o lag layout, digits alone: left layout "
            "(none: no mixing); a trailing ! marks the over-parameterised bound, never budget-matched "
            "(README, 'Variant names')")


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: its letters, the registry mixer they select and its arguments."""

    base: str  # S | R | G
    features: str = ""  # a subsequence of "pcg"
    rank: str = ""  # "" | q | v
    mixes: str = ""  # "" | 1 | 2 | 12
    lag: bool = False  # the o of the Tmix segment
    overparameterised: bool = False  # the trailing !

    @property
    def name(self) -> str:
        """The canonical name (what ``parse_variant`` reads back into this variant)."""
        tmix = self.mixes + (LAG if self.lag else "")
        return "-".join([self.base] + [s for s in (self.features, self.rank, tmix) if s]) + (BOUND if self.overparameterised else "")

    @property
    def mixer(self) -> str:
        """The registered mixer the variant is built from."""
        if self.base == "R" and self.mixes:
            return "hypermlp"
        return BASES[self.base]

    def layer_args(self, d_model: int) -> Dict[str, Any]:
        """The layer arguments the letters give, for model width ``d_model`` (only arguments the
        mixer takes: ReLU attention has no mix1, mix2 or layout)."""
        quarter = max(d_model // 4, 1)
        qk, vo = {"": (d_model, d_model), "q": (quarter, d_model), "v": (d_model, quarter)}[self.rank]
        args: Dict[str, Any] = {
            "conv_size": CONV_KERNEL if "c" in self.features else 0,
            "qk_gate": "g" in self.features,
            "out_gate": "g" in self.features,
            "rope": "p" in self.features,
            "qk_rank": qk,
            "vo_rank": vo,
        }
        if self.mixer in ("hypermlp", "hyperglu"):
            args["mix1"], args["mix2"] = "1" in self.mixes, "2" in self.mixes
            if self.mixes:
                args["layout"] = "lag" if self.lag else "left"
        return args

    def describe(self) -> str:
        """One line for help texts and reports."""
        base = {"S": "softmax attention", "R": "ReLU(L2Norm)", "G": "HyperGLU activation"}[self.base]
        feats = [{"p": "RoPE", "c": "conv", "g": "gates"}[f] for f in self.features] or ["no conv/gates/RoPE"]
        rank = {"": "full rank", "q": "qk_rank d/4", "v": "vo_rank d/4"}[self.rank]
        mix = (" + ".join(f"R({m})" for m in self.mixes) + (", lag layout" if self.lag else ", left layout")
               if self.mixes else "no sequence mixing")
        bound = "; over-parameterised bound (not budget-matched)" if self.overparameterised else ""
        return f"{base}, {', '.join(feats)}, {rank}, {mix}{bound}"


def looks_like_variant(name: Any) -> bool:
    """Whether ``name`` is meant as a variant name (a one-letter first segment), so that a bad one
    gets the variant grammar's error rather than "unknown mixer"."""
    return isinstance(name, str) and len(name.split("-", 1)[0].rstrip(BOUND)) == 1


def _error(name: str, msg: str) -> ConfigError:
    return ConfigError(f"variant name {name!r}: {msg} (README, 'Variant names')")


def _segment_kind(name: str, seg: str) -> str:
    """Feat | Rank | Tmix, from the segment's first letter; unknown letters are errors."""
    first = seg[0]
    if first in FEAT_ORDER:
        kind, allowed = "Feat", FEAT_ORDER
    elif first in RANKS:
        kind, allowed = "Rank", RANKS
    elif first in MIX_DIGITS + LAG:
        kind, allowed = "Tmix", MIX_DIGITS + LAG
    else:
        raise _error(name, f"unknown letter {first!r} in segment {seg!r}: after the base come Feat letters "
                           f"p, c, g, a Rank letter q or v, Tmix digits 1, 2 with an optional o, and a trailing !")
    for ch in seg:
        if ch not in allowed:
            raise _error(name, f"unknown letter {ch!r} in the {kind} segment {seg!r} (its letters: {', '.join(allowed)})")
    return kind


def parse_variant(name: str) -> Variant:
    """``"R-cg-q-12o"`` -> ``Variant``; a ConfigError naming the letter at fault otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a variant name must be a non-empty string, got {name!r}")
    body, over = (name[:-1], True) if name.endswith(BOUND) else (name, False)
    if BOUND in body:
        raise _error(name, "'!' (the over-parameterised bound) may only come last")
    base, *segments = body.split("-")
    if base not in BASES:
        raise _error(name, f"unknown base letter {base!r}: choose S (softmax), R (ReLU(L2Norm)) or G (GLU); "
                           "registered mixers are named in full (softmax, relu, hypermlp, hyperglu)")
    order = ("Feat", "Rank", "Tmix")
    found: Dict[str, str] = {}
    for seg in segments:
        if not seg:
            raise _error(name, "an empty segment (two '-' in a row, or a '-' at an end)")
        kind = _segment_kind(name, seg)
        if kind in found:
            raise _error(name, f"two {kind} segments, {found[kind]!r} and {seg!r}: give one")
        later = [k for k in found if order.index(k) > order.index(kind)]
        if later:
            raise _error(name, f"the {kind} segment {seg!r} must come before the {later[0]} segment "
                               f"{found[later[0]]!r} (order: Base-Feat-Rank-Tmix)")
        found[kind] = seg
    feat, rank, tmix = (found.get(k, "") for k in order)
    canonical = "".join(ch for ch in FEAT_ORDER if ch in feat)
    if len(set(feat)) != len(feat):
        raise _error(name, f"a Feat letter repeats in {feat!r}")
    if feat != canonical:
        raise _error(name, f"write the Feat letters in the order p, c, g: {canonical!r}, not {feat!r}")
    if len(rank) > 1:
        raise _error(name, f"one Rank letter only (q or v), got {rank!r}")
    digits, lag = tmix.rstrip(LAG), tmix.endswith(LAG)
    if LAG in digits or tmix.count(LAG) > 1:
        raise _error(name, f"'o' (the lag layout) comes once, after the digits: got {tmix!r}")
    if tmix and not digits:
        raise _error(name, "'o' (the lag layout) needs a digit before it: 1 (R(1)), 2 (R(2)) or 12")
    if len(set(digits)) != len(digits):
        raise _error(name, f"a Tmix digit repeats in {tmix!r}")
    if digits not in ("", "1", "2", "12"):
        raise _error(name, f"write the Tmix digits in the order 1, 2: {''.join(sorted(digits))!r}, not {digits!r}")
    if base == "S" and tmix:
        raise _error(name, f"letter {digits[0]!r} of the Tmix segment {tmix!r}: softmax (S) has no sequence "
                           "mixing in this library; drop the segment or use R or G")
    return Variant(base=base, features=feat, rank=rank, mixes=digits, lag=lag, overparameterised=over)


def variant_name(mixer: str, d_model: int, args: Optional[Mapping[str, Any]] = None,
                 overparameterised: bool = False) -> str:
    """The variant name of registered ``mixer`` with layer arguments ``args`` (a mapping of the
    layer's config fields; the layer's defaults fill the rest) at width ``d_model``: the other
    half of the round trip. A ConfigError when the arguments have no name (e.g. ``conv_size=3``,
    one gate without the other, ranks other than d and d/4)."""
    args = dict(args or {})
    config_cls = {"softmax": AttentionConfig, "relu": HyperConfig, "hypermlp": HyperConfig,
                  "hyperglu": HyperConfig}.get(mixer)
    if config_cls is None:
        raise ConfigError(f"mixer {mixer!r} has no variant letter (S softmax, R relu or hypermlp, G hyperglu)")
    known = {f.name for f in dataclasses.fields(config_cls)} - {"d_model"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown} for mixer {mixer!r}")
    if mixer == "relu":
        fixed = sorted(set(args) & {"seq_rank", "mix1", "mix2", "layout"})
        if fixed:
            raise ConfigError(f"mixer 'relu' does not take {fixed}: it has no sequence mixing")
        args.update(mix1=False, mix2=False)
    cfg = config_cls(d_model=d_model, **args)

    def no_name(what: str) -> ConfigError:
        return ConfigError(f"{mixer} with {what} has no variant name")

    base = {"softmax": "S", "relu": "R", "hypermlp": "R", "hyperglu": "G"}[mixer]
    if cfg.conv_size not in (0, CONV_KERNEL):
        raise no_name(f"conv_size={cfg.conv_size} (c means conv_size={CONV_KERNEL})")
    if cfg.qk_gate != cfg.out_gate:
        raise no_name(f"qk_gate={cfg.qk_gate}, out_gate={cfg.out_gate} (g means both gates)")
    features = ("p" if cfg.rope else "") + ("c" if cfg.conv_size else "") + ("g" if cfg.qk_gate else "")
    quarter = max(d_model // 4, 1)
    ranks = {(d_model, d_model): "", (quarter, d_model): "q", (d_model, quarter): "v"}
    if (cfg.qk_rank, cfg.vo_rank) not in ranks:
        raise no_name(f"qk_rank={cfg.qk_rank}, vo_rank={cfg.vo_rank} (q: {quarter}, {d_model}; "
                      f"v: {d_model}, {quarter}; no Rank letter: {d_model}, {d_model})")
    mixes = ""
    if mixer != "softmax":
        mixes = ("1" if cfg.mix1 else "") + ("2" if cfg.mix2 else "")
    variant = Variant(base=base, features=features, rank=ranks[(cfg.qk_rank, cfg.vo_rank)], mixes=mixes,
                      lag=bool(mixes) and cfg.layout == "lag", overparameterised=bool(overparameterised))
    return variant.name
