"""Text generation from a GRU language model: greedy, sampling and beam search.

Every function here is pure: no printing, no files, and randomness only through an explicit
``torch.Generator``. Generation runs in two phases:

1. **Warm-up.** The prefix is tokenised, mapped to ids (tokens outside the vocabulary become
   ``<unk>`` with one :class:`OutOfVocabularyWarning` naming them) and run through the model in
   ONE pass from the zero state: one ``forward`` call over the whole prefix, or one call of the
   backend's single-step decoder over all of it (:func:`warm_up`). The final state equals the
   seed's (d2l ``predict_ch8``) one-token-at-a-time warm-up, and the logits at the last
   position are the seed's first prediction.
2. **Decoding.** One token per step. For a :class:`~grulm.model.GRULM` a lean single-step
   decoder (:class:`GRUStepDecoder`) computes the step from the model's own parameters through
   its backend's ``decode_step`` (the compiled one of the ``cpu`` backend, or the readable
   torch step of ``reference`` where nothing can be compiled); any other module
   with the GRULM call signature ``model(inputs (B, T), state (L, B, H) | None) -> (logits
   (B, T, V), state)`` is stepped through its ``forward`` (:class:`ModelStepDecoder`).
   Sampling uses the Gumbel-max trick with noise drawn from the ``torch.Generator`` in blocks
   (:class:`GumbelSampler`); beam search keeps ``beam_width`` hypotheses in one batch.

Documented behaviours:

- The prefix must hold at least one token after cleaning (the seed needs one): an empty prefix
  is a :class:`~grulm.errors.ConfigError`.
- ``temperature == 0`` with ``strategy='sample'`` is greedy; a negative temperature is an error.
- ``top_k`` < 1 is an error; a ``top_k`` larger than the vocabulary is clamped to the vocabulary
  size with a :class:`GenerationWarning` (it then keeps every token).
- ``top_p`` must lie in (0, 1]; the kept set is the smallest set of most likely tokens whose
  probability reaches ``top_p`` (always at least the most likely one). With both, top-k is
  applied first, then top-p, then the distribution is renormalised.
- Temperature, top-k and top-p belong to ``strategy='sample'``; ``beam_width`` and
  ``length_penalty`` to ``strategy='beam'``. Setting one for another strategy is an error
  rather than silently ignored.
- ``max_new`` (the seed's ``num_preds``) must be ≥ 0; 0 returns the prefix.
- ``<unk>`` is never sampled and never enters a beam unless ``allow_unk=True``: it stands for
  every token the vocabulary lacks, so printing it says nothing. Greedy keeps it by default,
  because the seed's ``predict_ch8`` is the argmax over the whole vocabulary and ``predict``
  stays identical to it; ``allow_unk=False`` masks it for greedy too.
- Stop strings are searched in the generated text only (not the prefix); a sequence ends right
  after the first stop string it produces, and the stop string is kept in its text.
- Generation runs the model as in eval mode: no dropout, no autograd.
"""

from grulm.generate.api import STRATEGIES, check_options, generate, predict, stream
from grulm.generate.decoders import GRUStepDecoder, ModelStepDecoder, warm_up
from grulm.generate.sampling import GumbelSampler, filter_logits
from grulm.generate.text_format import (
    DroppedLettersWarning,
    GenerationWarning,
    OutOfVocabularyWarning,
    TextFormat,
    encode_prefix,
)

__all__ = [
    "STRATEGIES",
    "DroppedLettersWarning",
    "GRUStepDecoder",
    "GenerationWarning",
    "GumbelSampler",
    "ModelStepDecoder",
    "OutOfVocabularyWarning",
    "TextFormat",
    "check_options",
    "encode_prefix",
    "filter_logits",
    "generate",
    "predict",
    "stream",
    "warm_up",
]
